"""End to end on a real git + DVC clone: the README's main job, caching, reproducibility."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import sh

pytestmark = pytest.mark.e2e


def stages_run(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


def test_fresh_clone_trains_a_model_that_beats_the_baseline(reproduced_repo: Path) -> None:
    metrics = json.loads((reproduced_repo / "reports" / "metrics.json").read_text())
    assert metrics["cnn"]["overall"]["f1"] >= 0.98
    assert metrics["cnn"]["overall"]["f1"] > metrics["baseline"]["overall"]["f1"]
    assert (reproduced_repo / "reports" / "figures" / "detections.png").read_bytes()[:4] == (
        b"\x89PNG"
    )


def test_fresh_clone_reproduces_the_committed_results(reproduced_repo: Path) -> None:
    """dvc.lock, metrics and plots after a fresh `dvc repro` equal what was committed."""
    assert sh("git", "status", "--porcelain", cwd=reproduced_repo).stdout == ""


def test_second_repro_runs_no_stage(reproduced_repo: Path) -> None:
    result = sh("dvc", "repro", cwd=reproduced_repo)
    assert stages_run(result.stdout) == []
    assert (
        "Data and pipelines are up to date"
        in sh("dvc", "status", "dvc.yaml", cwd=reproduced_repo).stdout
    )


def test_changing_epochs_reruns_only_train_and_evaluate(reproduced_repo: Path, copy_repo) -> None:
    repo = copy_repo(reproduced_repo)
    params = repo / "params.yaml"
    params.write_text(re.sub(r"epochs: \d+", "epochs: 3", params.read_text()))
    assert stages_run(sh("dvc", "repro", cwd=repo).stdout) == ["train", "evaluate"]
