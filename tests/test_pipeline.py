"""End to end on a real git + DVC clone: the README's main job, caching, reproducibility."""

from __future__ import annotations

import json
import platform
import re
from pathlib import Path

import pytest
import yaml

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


# What the machine's floating-point kernels decide: the trained model and what is computed from
# it. Its metrics match the committed ones within METRIC_TOLERANCE on any machine (README).
MODEL_OUTPUTS = {"models/model.pt", "reports/metrics.json", "reports/plots", "reports/figures"}
METRIC_TOLERANCE = 0.02  # the seed-to-seed spread of F1 on the toy set is 0.008


def lock_entries(lock_text: str) -> dict[str, dict[str, object]]:
    """Each stage's deps, params and outs from dvc.lock, less the model's outputs."""
    stages = yaml.safe_load(lock_text)["stages"]
    return {
        name: {
            "params": stage.get("params"),
            **{
                key: [entry for entry in stage.get(key, []) if entry["path"] not in MODEL_OUTPUTS]
                for key in ("deps", "outs")
            },
        }
        for name, stage in stages.items()
    }


def test_fresh_clone_reproduces_the_committed_results(reproduced_repo: Path) -> None:
    """After a fresh `dvc repro`, every stage's deps, params and outputs but the model's equal
    the committed bytes; the model's metrics equal the committed ones within the tolerance,
    the baseline's exactly; the pipeline's CPU math is pinned to AVX2 on x86-64."""
    changed = sh("git", "status", "--porcelain", cwd=reproduced_repo).stdout.splitlines()
    assert {line[3:].split("/")[0] for line in changed} <= {"dvc.lock", "reports"}
    committed = sh("git", "show", "HEAD:dvc.lock", cwd=reproduced_repo).stdout
    assert lock_entries((reproduced_repo / "dvc.lock").read_text()) == lock_entries(committed)
    fresh = json.loads((reproduced_repo / "reports/metrics.json").read_text())
    before = json.loads(sh("git", "show", "HEAD:reports/metrics.json", cwd=reproduced_repo).stdout)
    assert fresh["baseline"] == before["baseline"]
    for name, value in before["cnn"]["overall"].items():
        assert abs(fresh["cnn"]["overall"][name] - value) <= METRIC_TOLERANCE, name
    if platform.machine() == "x86_64":
        probe = "import badpixels, torch; print(torch.backends.cpu.get_cpu_capability())"
        assert sh("python", "-c", probe, cwd=reproduced_repo).stdout.strip() == "AVX2"


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
