"""What real DVC does with a stage's outputs when the stage fails, as the README says: `dvc
repro` removes them before running the command, so a failed run leaves none in the workspace;
`dvc checkout` brings cached ones back from the cache, git the uncached ones it tracks."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import init_repo, sh

MAKE = """\
import pathlib, sys
text = pathlib.Path("src.txt").read_text()
if text.startswith("fail"):
    sys.exit("make: refusing this input")
pathlib.Path("out.txt").write_text(text.upper())
pathlib.Path("report.txt").write_text(f"{len(text)} characters")
"""

DVC_YAML = {
    "stages": {
        "make": {
            "cmd": "python make.py",
            "deps": ["make.py", "src.txt"],
            "outs": ["out.txt", {"report.txt": {"cache": False}}],
        }
    }
}


@pytest.mark.e2e
def test_a_failed_stage_loses_its_outputs_until_checked_out(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "make.py").write_text(MAKE)
    (repo / "src.txt").write_text("good\n")
    (repo / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML))
    init_repo(repo)
    sh("dvc", "init", "-q", cwd=repo)
    sh("dvc", "repro", "-q", cwd=repo)
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-q", "-m", "reproduced", cwd=repo)
    assert (repo / "out.txt").read_text() == "GOOD\n"

    (repo / "src.txt").write_text("fail\n")
    failed = sh("dvc", "repro", "-q", cwd=repo, check=False)
    assert failed.returncode != 0
    assert "refusing this input" in failed.stderr
    assert not (repo / "out.txt").exists() and not (repo / "report.txt").exists()
    cached = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["make"]["outs"][0]["md5"]
    assert (repo / ".dvc" / "cache" / "files" / "md5" / cached[:2] / cached[2:]).is_file()

    sh("dvc", "checkout", "make", cwd=repo)
    assert (repo / "out.txt").read_text() == "GOOD\n"
    assert not (repo / "report.txt").exists()  # never cached: DVC cannot bring it back
    sh("git", "checkout", "--", "report.txt", cwd=repo)
    assert (repo / "report.txt").read_text() == "5 characters"
