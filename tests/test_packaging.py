"""One lock for every environment, and the toolkit as a distribution of its own."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from branchflow.workspace.lock import locked_requirements
from tests.conftest import ROOT, init_repo, sh

# What only the example uses: the toolkit alone must pull none of it.
EXAMPLE_ONLY = {"torch", "av", "scikit-image", "scipy", "scikit-learn", "matplotlib", "badpixels"}


def names(requirements: list[str] | tuple[str, ...]) -> set[str]:
    return {re.split(r"[=<>!~ ;\[]", line, maxsplit=1)[0].lower() for line in requirements}


def uv(*args: str, cwd: Path = ROOT) -> str:
    return sh(sys.executable, "-m", "uv", *args, cwd=cwd).stdout


def test_the_lock_matches_every_pyproject() -> None:
    """`uv lock --check` fails when a pyproject.toml changed and uv.lock did not."""
    result = subprocess.run(
        [sys.executable, "-m", "uv", "lock", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_the_toolkit_alone_pulls_nothing_of_the_example() -> None:
    locked = uv("export", "--frozen", "--package", "branchflow", "--no-default-groups")
    pulled = names([line for line in locked.splitlines() if line and line[0] not in "# "])
    assert "mlflow-skinny" in pulled and "dvc" in pulled
    assert not pulled & EXAMPLE_ONLY
    assert "mlflow" not in pulled  # the full mlflow drags its server, pandas and scikit-learn


# The platforms the README says the lock covers, as uv names them, and as the README does.
PLATFORMS = {"x86_64-unknown-linux-gnu": "Linux x86-64", "aarch64-apple-darwin": "macOS arm64"}


@pytest.mark.parametrize("platform", PLATFORMS)
def test_the_lock_installs_on_each_platform_the_readme_names(platform: str) -> None:
    """`uv sync --locked` finds a wheel of every default-group package for the platform
    (macOS at uv's oldest supported release, 13)."""
    assert PLATFORMS[platform] in (ROOT / "README.md").read_text()
    command = [sys.executable, "-m", "uv", "sync", "--locked", "--dry-run", "--offline"]
    result = subprocess.run(
        [*command, "--python-platform", platform], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "Would download" in result.stderr or "Would install" in result.stderr, result.stderr


def test_the_model_and_azure_ml_pin_the_locked_versions() -> None:
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["branchflow"]
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    versions = {package["name"]: package["version"] for package in lock["package"]}
    model = locked_requirements(ROOT, settings["model"]["lock_groups"])
    conda = (ROOT / "pipelines/azureml/conda.yml").read_text()
    for line in model:
        name, version = line.split(";")[0].strip().split("==")
        assert versions[name].split("+")[0] == version
    torch = f"torch=={versions['torch']} ;"
    assert any(line.startswith(torch) for line in model)
    assert torch in conda
    assert "nvidia-cudnn" in conda  # Azure ML trains on the GPU cluster: PyPI's CUDA build


def test_the_installer_pin_is_the_one_pyproject_requires() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    version = pyproject["tool"]["uv"]["required-version"].removeprefix("==")
    assert f"uv=={version}" in pyproject["dependency-groups"]["dev"]
    for text in [(ROOT / "README.md").read_text(), (ROOT / ".ci/run").read_text()]:
        assert set(re.findall(r"pip install uv==(\S+)", text)) == {version}


@pytest.mark.e2e
def test_the_toolkit_wheel_installs_alone(tmp_path: Path) -> None:
    """Built and installed in a new environment: `branchflow` runs, the example is absent."""
    uv("build", "--package", "branchflow", "--wheel", "--out-dir", str(tmp_path / "dist"))
    (wheel,) = (tmp_path / "dist").glob("branchflow-*.whl")
    shipped = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert shipped == {"branchflow", wheel.name.split("-py3")[0] + ".dist-info"}
    pins = uv(
        "export",
        "--frozen",
        "--package",
        "branchflow",
        "--no-default-groups",
        "--no-emit-workspace",
    )
    (tmp_path / "pins.txt").write_text(pins)
    python = tmp_path / "venv/bin/python"
    uv("venv", "-q", "--python", sys.executable, str(tmp_path / "venv"))
    uv("pip", "install", "-q", "--python", str(python), "--no-deps", "-r", "pins.txt", str(wheel),
       cwd=tmp_path)  # fmt: skip
    uv("pip", "check", "--python", str(python))
    installed = uv("pip", "freeze", "--python", str(python)).split()
    assert not names(installed) & EXAMPLE_ONLY
    assert (
        "Usage: branchflow" in sh(tmp_path / "venv/bin/branchflow", "--help", cwd=tmp_path).stdout
    )
    # `init` needs what only the wheel ships (its templates) and the toolkit's own dependencies
    project = tmp_path / "project"
    (project / "pyproject.toml").parent.mkdir()
    (project / "pyproject.toml").write_text('[project]\nname = "p"\n')
    (project / "dvc.yaml").write_text("stages:\n  a:\n    cmd: echo 1 > a.txt\n    outs: [a.txt]\n")
    init_repo(project)
    sh(tmp_path / "venv/bin/dvc", "init", "-q", cwd=project)
    sh(tmp_path / "venv/bin/branchflow", "init", cwd=project)
    assert (project / ".github/workflows/pr-training.yml").is_file()


def test_pip_check_is_clean_in_the_project_environment() -> None:
    uv("pip", "check", "--python", sys.executable)  # exits non-zero on any conflict


@pytest.mark.e2e
def test_the_toolkit_works_at_the_lowest_versions_its_ranges_allow(tmp_path: Path) -> None:
    """`.github/scripts/lowest-direct.sh` (the toolkit CI job's): every direct dependency at
    its floor, and the toolkit's tests that need no example pass there."""
    env = {**os.environ, "VENV": str(tmp_path / "venv"), "PYTHON": sys.executable}
    env["UV"] = f"{sys.executable} -m uv"
    command = ["bash", ".github/scripts/lowest-direct.sh", "-m", "not e2e"]
    command += ["-p", "no:cacheprovider", "--basetemp", str(tmp_path / "basetemp")]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    floors = tomllib.loads((ROOT / "packages/branchflow/pyproject.toml").read_text())
    mlflow_floor = next(d for d in floors["project"]["dependencies"] if "mlflow-skinny" in d)
    assert f"mlflow-skinny=={mlflow_floor.split('>=')[1].split(',')[0]}" in result.stdout
    assert " passed" in result.stdout and " failed" not in result.stdout
