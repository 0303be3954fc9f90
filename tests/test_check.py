"""`branchflow check`: local imports a DVC stage does not declare, on small real git + DVC repos."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from branchflow.cli import main
from branchflow.errors import BranchflowError
from branchflow.workspace.imports import undeclared_imports
from tests.conftest import init_repo, sh

# `python -m app.train` imports app/helpers.py directly; helpers.py imports the package
# app/core through a relative import, and its submodule maths.py through `from . import`.
APP = {
    "src/app/__init__.py": "",
    "src/app/train.py": "import json, os\nimport numpy\n\nfrom app.helpers import clean\n",
    "src/app/helpers.py": "from .core import maths\n\n\ndef clean():\n    return maths\n",
    "src/app/core/__init__.py": "import collections.abc\n",
    "src/app/core/maths.py": "from __future__ import annotations\n\nimport yaml\n",
    "src/app/unused.py": "import app.helpers\n",
}
APP_FILES = [
    "src/app/__init__.py",
    "src/app/core/__init__.py",
    "src/app/core/maths.py",
    "src/app/helpers.py",
]
TRAIN = {"cmd": "python -m app.train data.txt", "deps": ["data.txt", "src/app/train.py"]}


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty git + DVC repository, made once (`dvc init` takes a second)."""
    path = tmp_path_factory.mktemp("check") / "repo"
    path.mkdir()
    sh("git", "init", "-q", "-b", "main", cwd=path)
    sh("dvc", "init", "-q", cwd=path)
    return init_repo(path)


@pytest.fixture
def project(template: Path, tmp_path: Path):
    """A copy of `template` holding `files` and a dvc.yaml with `stages`."""

    def make(stages: dict[str, Any], files: dict[str, str], dvcfile: str = "dvc.yaml") -> Path:
        repo = tmp_path / "repo"
        if not repo.exists():
            shutil.copytree(template, repo, symlinks=True)
        for name, text in {"data.txt": "x\n", **files}.items():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            (repo / name).write_text(text)
        (repo / dvcfile).parent.mkdir(parents=True, exist_ok=True)
        (repo / dvcfile).write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
        return repo

    return make


def check(repo: Path, monkeypatch: pytest.MonkeyPatch) -> Result:
    monkeypatch.chdir(repo)
    return CliRunner().invoke(main, ["check"])


def test_undeclared_local_imports_are_listed_and_fail(project, monkeypatch) -> None:
    repo = project({"train": TRAIN}, APP)
    assert undeclared_imports(repo) == {"train": APP_FILES}

    result = check(repo, monkeypatch)
    assert result.exit_code == 1, result.output
    assert result.stdout == (
        f"stage train: {', '.join(APP_FILES)} not in deps (imported by python -m app.train)\n"
    )


def test_declaring_the_files_or_their_folder_passes(project, monkeypatch) -> None:
    deps = [*TRAIN["deps"], "src/app/helpers.py", "src/app/core"]
    repo = project({"train": {**TRAIN, "deps": deps}}, APP)
    assert undeclared_imports(repo) == {"train": ["src/app/__init__.py"]}

    repo = project({"train": {**TRAIN, "deps": ["data.txt", "src/app"]}}, APP)
    assert undeclared_imports(repo) == {}
    result = check(repo, monkeypatch)
    assert result.exit_code == 0, result.output
    assert result.stdout == "all 1 stages declare their local imports\n"


def test_foreach_wdir_and_nested_dvc_yaml_stages(project, monkeypatch) -> None:
    files = {
        "scripts/score.py": "import sys\nfrom common import shared\n",
        "scripts/common/__init__.py": "",
        "scripts/common/shared.py": "",
        "sub/tool/__init__.py": "",
        "sub/tool/run.py": "from tool import extra\nfrom . import missing_attribute\n",
        "sub/tool/extra.py": "",
        "nested/job.py": "import helper\n",
        "nested/helper.py": "",
    }
    stages = {
        "score": {
            "foreach": ["a", "b"],
            "do": {"cmd": "python3 -u scripts/score.py ${item}", "deps": ["scripts/score.py"]},
        },
        "tool": {"cmd": "cd . && python -m tool.run", "wdir": "sub", "deps": ["tool/run.py"]},
    }
    project({"job": {"cmd": "python job.py", "deps": ["job.py"]}}, {}, "nested/dvc.yaml")
    repo = project(stages, files)
    common = ["scripts/common/__init__.py", "scripts/common/shared.py"]
    assert undeclared_imports(repo) == {
        "score@a": common,
        "score@b": common,
        "tool": ["sub/tool/__init__.py", "sub/tool/extra.py"],
        "nested/dvc.yaml:job": ["nested/helper.py"],
    }
    lines = check(repo, monkeypatch).stdout.splitlines()
    assert (
        "stage score@b: "
        + ", ".join(common)
        + (" not in deps (imported by python3 scripts/score.py)")
        in lines
    )

    stages["score"]["do"]["deps"] = ["scripts"]
    stages["tool"]["deps"] = ["tool"]
    project({"job": {"cmd": "python job.py", "deps": ["."]}}, {}, "nested/dvc.yaml")
    repo = project(stages, {})
    result = check(repo, monkeypatch)
    assert result.exit_code == 0, result.output
    assert result.stdout == "all 4 stages declare their local imports\n"


# A course-style layout: stages under src/stages import `src.*` from the repository root,
# which only a PYTHONPATH exported in the shell (or a sys.path edit) puts on their path.
COURSE = {
    "src/__init__.py": "",
    "src/stages/train.py": "import sys\n\nfrom src.utils.logs import get_logger\n",
    "src/utils/__init__.py": "",
    "src/utils/logs.py": "import logging\n\n\ndef get_logger():\n    return logging\n",
}


def test_an_import_only_a_pythonpath_set_elsewhere_resolves_is_reported(
    project, monkeypatch
) -> None:
    stage = {"cmd": "python src/stages/train.py", "deps": ["src/stages/train.py"]}
    repo = project({"train": stage}, COURSE)
    result = check(repo, monkeypatch)
    assert result.exit_code == 1, result.output
    assert result.stdout.splitlines() == [
        "stage train: src/__init__.py, src/utils/__init__.py, src/utils/logs.py not in deps "
        "(imported by python src/stages/train.py)",
        "stage train: imports src.utils.logs from ., which only a PYTHONPATH or sys.path set "
        "outside dvc.yaml provides; add '.' to [tool.branchflow.azureml] pythonpath (the "
        "builds' and Azure ML's PYTHONPATH)",
    ]


@pytest.mark.parametrize(
    ("cmd", "pyproject"),
    [
        ("PYTHONPATH=. python src/stages/train.py", ""),
        ("export PYTHONPATH=$PWD && python src/stages/train.py", ""),
        ("python src/stages/train.py", '[tool.branchflow.azureml]\npythonpath = ["."]\n'),
    ],
)
def test_a_pythonpath_the_cmd_or_the_settings_give_is_an_import_root(
    project, monkeypatch, cmd: str, pyproject: str
) -> None:
    repo = project(
        {"train": {"cmd": cmd, "deps": ["src"]}}, {**COURSE, "pyproject.toml": pyproject}
    )
    result = check(repo, monkeypatch)
    assert result.exit_code == 0, result.output
    assert result.stdout == "all 1 stages declare their local imports\n"


def test_stdlib_and_third_party_imports_are_never_listed(project) -> None:
    files = {
        "run.py": (
            "import json, numpy\nimport os.path\nfrom collections import abc\n"
            "import torch.nn as nn\nfrom yaml import safe_load\n\n\ndef f():\n"
            "    import matplotlib.pyplot\n"
        ),
        # a virtualenv inside the repository is no import root
        ".venv/lib/python3.11/site-packages/numpy/__init__.py": "",
        ".venv/lib/python3.11/site-packages/yaml.py": "",
    }
    stages = {
        "run": {"cmd": "python run.py", "deps": ["run.py"]},
        "shell": {"cmd": "echo python > out.txt; python -c 'import local'", "outs": ["out.txt"]},
    }
    assert undeclared_imports(project(stages, files)) == {}


def test_malformed_dvc_yaml_and_unreadable_python_are_one_line_errors(project, monkeypatch) -> None:
    repo = project({"train": TRAIN}, {**APP, "src/app/helpers.py": "def broken(:\n"})
    with pytest.raises(BranchflowError, match=r"cannot read the Python file src/app/helpers\.py"):
        undeclared_imports(repo)

    (repo / "dvc.yaml").write_text("stages:\n  train:\n    cmd: [unclosed\n")
    result = check(repo, monkeypatch)
    assert result.exit_code == 3
    assert result.stderr.startswith("error: cannot read the DVC pipeline in ")
    assert len(result.stderr.splitlines()) == 1
