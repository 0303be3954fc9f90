"""`branchflow.errors.docs_url`: the docs links a pip user can open, from the package metadata."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from branchflow.errors import BranchflowError, docs_url
from branchflow.registry.package import model_settings
from branchflow.settings import Settings

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_docs_links_are_the_documentation_url_of_the_package() -> None:
    urls = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]["urls"]
    assert docs_url("registry.md") == f"{urls['Documentation']}/registry.md"
    assert docs_url("registry.md").startswith("https://")


def test_an_error_that_names_a_docs_page_gives_its_url() -> None:
    with pytest.raises(BranchflowError) as error:
        model_settings(Settings(base_name="p", production_model="p_production"))
    assert str(error.value).endswith(f"(see {docs_url('registry.md')})")
