"""The toolkit's release: `.github/workflows/release.yml` (hand-written, linted, hardened: OIDC
publishing from the protected environment only) and `.github/scripts/check-dist.sh`, run here
on distributions built as the workflow builds them, good and broken."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from branchflow.ci.workflows import MARKER
from tests.conftest import ROOT, sh
from tests.test_init import assert_lints_clean
from tests.test_workflows import GITHUB, load, run_job

RELEASE = GITHUB / "workflows" / "release.yml"
CHECK_DIST = GITHUB / "scripts" / "check-dist.sh"
TOOLKIT = tomllib.loads((ROOT / "packages/branchflow/pyproject.toml").read_text())["project"]
# The release's one action beyond the generated workflows' (PINS): the commit its tag points to.
PUBLISH_ACTION = "pypa/gh-action-pypi-publish"


def test_release_workflow_passes_actionlint_and_zizmor() -> None:
    assert_lints_clean(GITHUB, [RELEASE], personas=((), ("--persona", "auditor")))


def test_release_workflow_is_hand_written_so_init_leaves_it_alone() -> None:
    assert not RELEASE.read_text().startswith(MARKER)
    checked = sh("branchflow", "init", "--check", cwd=ROOT, check=False)
    assert checked.returncode == 0, checked.stdout[-3000:] + checked.stderr


def test_release_runs_on_version_tags_only_and_only_publish_may_mint_a_token() -> None:
    workflow = load(RELEASE)
    assert workflow["on"] == {"push": {"tags": ["v*"]}}
    assert workflow["permissions"] == {}
    build, publish = workflow["jobs"]["build"], workflow["jobs"]["publish"]
    assert set(workflow["jobs"]) == {"build", "publish"}
    assert build["permissions"] == {"contents": "read"} and "environment" not in build
    assert publish["permissions"] == {"id-token": "write"}
    assert publish["environment"]["name"] == "release" and publish["needs"] == "build"
    # No secret anywhere (trusted publishing needs none), no expression inside a script.
    assert "secrets" not in json.dumps(workflow)
    (upload,) = [s for s in publish["steps"] if s.get("uses", "").startswith(PUBLISH_ACTION)]
    assert not {"user", "password"} & set(upload.get("with", {}))
    for job in workflow["jobs"].values():
        for step in job["steps"]:
            assert "${{" not in step.get("run", ""), step
            if step.get("uses", "").startswith("actions/checkout@"):
                assert step["with"]["persist-credentials"] is False


@pytest.mark.parametrize(("tag", "passes"), [(f"v{TOOLKIT['version']}", True), ("v99.0.0", False)])
def test_the_tag_must_be_the_toolkit_s_version(tag: str, passes: bool, tmp_path: Path) -> None:
    step = "The tag is the toolkit's version"
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"  # the venv's uv
    env = {**os.environ, "PATH": path, "GITHUB_REF_NAME": tag, "GITHUB_REF_TYPE": "tag"}
    (result,) = run_job("release.yml", "build", step, step, ROOT, env, {})
    assert (result.returncode == 0) is passes, result.stdout + result.stderr
    assert passes or f"tag {tag} is not v{TOOLKIT['version']}" in result.stdout


# --- check-dist.sh on distributions built as release.yml builds them ------------------------


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The toolkit's sdist and the wheel built from it: `uv build` as in release.yml."""
    out = tmp_path_factory.mktemp("dist")
    sh(sys.executable, "-m", "uv", "build", "-q", "--package", "branchflow", "--no-sources",
       "--out-dir", out, cwd=ROOT)  # fmt: skip
    return out


def check_dist(dist: Path) -> subprocess.CompletedProcess[str]:
    """The script as release.yml runs it, with this interpreter (and its shipped pip)."""
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("CHECK_DIST_TWINE", None)  # twine needs PyPI
    return subprocess.run(
        ["bash", CHECK_DIST, dist], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )


def rewrite_metadata(wheel: Path, target: Path, change) -> None:
    """A copy of `wheel` at `target` whose METADATA is `change(METADATA)`."""
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(target, "w") as copy:
        for item in source.infolist():
            data = source.read(item)
            if item.filename.endswith(".dist-info/METADATA"):
                data = change(data.decode()).encode()
            copy.writestr(item, data)


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda m: m.replace("Provides-Extra: azure\n", ""), "the extras are ['report']"),
        (lambda m: m.replace("Requires-Python: >=3.11\n", ""), "Requires-Python is None"),
        (lambda m: m.split("\n\n", 1)[0] + "\n\n", "no Markdown readme"),
        (lambda m: m.replace("Name: branchflow", "Name: branchflow-x"), "wheel is branchflow-x"),
    ],
    ids=["extra", "requires-python", "readme", "name"],
)
def test_check_dist_refuses_a_wheel_with_broken_metadata(
    dist: Path, tmp_path: Path, breakage, message: str
) -> None:
    broken = tmp_path / "dist"
    broken.mkdir()
    (wheel,) = dist.glob("*.whl")
    (sdist,) = dist.glob("*.tar.gz")
    shutil.copy(sdist, broken)
    rewrite_metadata(wheel, broken / wheel.name, breakage)
    result = check_dist(broken)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"check-dist: {message}" in result.stdout
    assert "pip install" not in result.stdout  # it stops before installing anything


def test_check_dist_wants_one_wheel_and_one_sdist(dist: Path, tmp_path: Path) -> None:
    (wheel,) = dist.glob("*.whl")
    shutil.copy(wheel, tmp_path)
    result = check_dist(tmp_path)
    assert result.returncode == 1
    assert "want one branchflow wheel and one sdist" in result.stderr


@pytest.mark.e2e
def test_check_dist_installs_the_wheel_with_pip_and_runs_it(dist: Path) -> None:
    """pip installs the wheel and both extras into a new virtualenv (about a minute here: pip
    resolves from the indexes), `branchflow --help` runs and `init --check` passes."""
    result = check_dist(dist)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    for seen in [
        f"{TOOLKIT['name']} {TOOLKIT['version']}: metadata ok",
        "No broken requirements found.",
        "Usage: branchflow [OPTIONS] COMMAND [ARGS]...",
        "files match [tool.branchflow]",
        "are good",
    ]:
        assert seen in result.stdout, output[-5000:]
