"""Metric names that stay put, the base's metrics wherever DVC keeps them, and pipelines in
subfolders: real git + DVC repositories, as a team's own DVC project lays them out."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from branchflow.cli import main
from branchflow.errors import BranchflowError
from branchflow.report.compare import compare, open_dvc, resolve_base, stage_changes
from branchflow.report.document import write_report
from branchflow.report.gate import run_gate
from branchflow.tracking import read_snapshot
from branchflow.workspace.naming import qualified_names
from tests.conftest import built_repo, hide_ci_variables, sh
from tests.metrics_project import make_pipelines_repo, set_params

pytestmark = pytest.mark.e2e

GATE = '[tool.branchflow.gate.max_drop_vs_base]\n"f1" = 0.05\n'


@pytest.fixture(autouse=True)
def no_ci_env(monkeypatch: pytest.MonkeyPatch) -> None:
    hide_ci_variables(monkeypatch, "MLFLOW_TRACKING_URI")


def test_names_keep_their_key_and_only_colliding_keys_get_their_file() -> None:
    keys = [("a.json", "f1"), ("a.json", "loss"), ("b.json", "f1"), ("b.json", "auc")]
    assert qualified_names(keys) == {
        ("a.json", "f1"): "a.json:f1",
        ("a.json", "loss"): "loss",
        ("b.json", "f1"): "b.json:f1",
        ("b.json", "auc"): "auc",
    }


def test_a_second_metrics_file_leaves_the_first_ones_names_alone(tmp_path: Path) -> None:
    repo = make_pipelines_repo(tmp_path / "repo", {"pipelines/train": {"f1": 0.9, "loss": 0.2}})
    first = "pipelines/train/metrics.json"
    assert read_snapshot(repo, None).metrics == {"f1": 0.9, "loss": 0.2}

    (repo / "extra.json").write_text(json.dumps({"auc": 0.8, "loss": 0.3}))
    (repo / "dvc.yaml").write_text("metrics:\n  - extra.json\n")
    expected = {"f1": 0.9, f"{first}:loss": 0.2, "auc": 0.8, "extra.json:loss": 0.3}
    assert read_snapshot(repo, None).metrics == expected
    with open_dvc(repo) as dvc:
        found = compare(dvc, None, "prod", {})
    assert {m.name: m.value for m in found.metrics} == expected


def test_a_renamed_metrics_file_keeps_the_names_register_logs(tmp_path: Path) -> None:
    """The base's only metrics file is replaced by another with the same keys: this branch's
    metrics keep their plain names (those `register` logs), the base's get their file."""
    folder = "pipelines/train"
    repo = make_pipelines_repo(tmp_path / "repo", {folder: {"f1": 0.9}})
    base = resolve_base(repo, "HEAD")
    dvc_yaml = repo / folder / "dvc.yaml"
    dvc_yaml.write_text(dvc_yaml.read_text().replace("metrics.json", "renamed.json"))
    set_params(repo, folder, f1=0.8)
    assert read_snapshot(repo, None).metrics == {"f1": 0.8}
    with open_dvc(repo) as dvc:
        found = compare(dvc, base, None, {})
    assert {m.name: (m.value, m.base) for m in found.metrics} == {
        "f1": (0.8, None),
        f"{folder}/metrics.json:f1": (None, 0.9),
    }


@pytest.fixture(scope="module")
def cached(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`main` with a DVC-cached `eval/metrics.json` (f1 0.9) pushed to a local remote; a branch
    that lowers f1 to 0.88, reproduced."""

    def make(repo: Path) -> None:
        make_pipelines_repo(repo, {".": {"f1": 0.9}}, GATE)
        sh("dvc", "push", "-q", "-r", "store", cwd=use_remote(repo))
        sh("git", "checkout", "-q", "-b", "feature", cwd=repo)
        set_params(repo, ".", f1=0.88)

    return built_repo(tmp_path_factory, "cached", make)


def use_remote(repo: Path) -> Path:
    """Make `remote` beside `repo` its default DVC remote (in `.dvc/config.local`)."""
    remote = repo.parent / "remote"
    sh("dvc", "remote", "add", "-q", "-f", "--local", "-d", "store", remote, cwd=repo)
    return repo


def copy_project(repo: Path, to: Path) -> Path:
    """`repo` with its remote beside it, as `cached` built them."""
    shutil.copytree(repo.parent / "remote", to / "remote")
    shutil.copytree(repo, to / "repo", symlinks=True)
    return use_remote(to / "repo")


def test_base_metrics_come_from_the_dvc_cache(cached: Path, tmp_path: Path) -> None:
    repo = copy_project(cached, tmp_path)
    shutil.rmtree(tmp_path / "remote")
    verdict = run_gate(repo, "main", env={})
    assert [c.text for c in verdict.checks] == [
        "`f1` vs main: 0.9000 → 0.8800, within the 0.0500 drop allowed"
    ]


def test_base_metrics_come_from_the_remote_without_the_cache(cached: Path, tmp_path: Path) -> None:
    repo = copy_project(cached, tmp_path)
    shutil.rmtree(repo / ".dvc" / "cache")
    verdict = run_gate(repo, "main", env={})
    assert verdict.passed, verdict.lines()
    assert [c.text for c in verdict.checks] == [
        "`f1` vs main: 0.9000 → 0.8800, within the 0.0500 drop allowed"
    ]


def test_unreachable_base_metrics_fail_the_gate_and_say_how_to_fetch_them(
    cached: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = copy_project(cached, tmp_path)
    shutil.rmtree(repo / ".dvc" / "cache")
    shutil.rmtree(tmp_path / "remote")
    main_sha = sh("git", "rev-parse", "--short=7", "main", cwd=repo).stdout.strip()
    monkeypatch.chdir(repo)
    result = CliRunner().invoke(main, ["gate", "--base", "main"])
    assert result.exit_code == 1, result.output
    assert result.output.splitlines()[:2] == [
        "gate failed: 1 of 1 rules failed",
        f"FAIL: max_drop_vs_base rules cannot be checked: the base's metrics (eval/metrics.json "
        f"at main, {main_sha}) are in neither git, this DVC cache nor its remote: run `dvc fetch "
        "--all-branches --type metrics` with the remote that holds them, or `dvc push` from "
        "the base's build",
    ]
    assert "first run" not in result.output
    result = CliRunner().invoke(main, ["report", "--base", "main", "--out", "report.md"])
    assert result.exit_code == 0, result.output
    report = (repo / "report.md").read_text()
    assert "metrics could not be read: the base" in report
    assert "first run" not in report


def test_stage_table_covers_every_dvc_yaml_in_subfolders(tmp_path: Path) -> None:
    folders = {"pipelines/train": {"f1": 0.9}, "pipelines/score": {"f1": 0.8, "auc": 0.7}}
    repo = make_pipelines_repo(tmp_path / "repo", folders)
    sh("git", "checkout", "-q", "-b", "feature", cwd=repo)
    set_params(repo, "pipelines/score", auc=0.75)
    write_report(repo, repo / "report.md", "main", env={})
    document = yaml.safe_load((repo / "report.json").read_text())
    assert document["stages"] == [
        {
            "stage": "pipelines/score/dvc.yaml:train",
            "status": "rerun",
            "reasons": ["param `train.auc` 0.7 → 0.75"],
        },
        {"stage": "pipelines/train/dvc.yaml:train", "status": "reused", "reasons": []},
    ]
    assert document["params"] == [{"name": "train.auc", "old": "0.7", "new": "0.75"}]
    names = {m["name"] for m in document["metrics"]}
    assert names == {"pipelines/score/metrics.json:f1", "pipelines/train/metrics.json:f1", "auc"}


def test_a_lock_entry_of_a_stage_dvc_yaml_no_longer_defines_is_no_stage(tmp_path: Path) -> None:
    """DVC leaves a removed stage's entry in dvc.lock; the report lists stages, not entries."""
    repo = make_pipelines_repo(tmp_path / "repo", {"pipelines/train": {"f1": 0.9}})
    lock = repo / "pipelines/train/dvc.lock"
    document = yaml.safe_load(lock.read_text())
    document["stages"]["gone"] = document["stages"]["train"]
    lock.write_text(yaml.safe_dump(document))
    sh("git", "commit", "-qam", "a stale entry at the base too", cwd=repo)
    base = resolve_base(repo, "HEAD")
    assert [change.stage for change in stage_changes(repo, base)] == [
        "pipelines/train/dvc.yaml:train"
    ]


def test_each_pipeline_is_reported_and_gated_on_its_own_metrics(tmp_path: Path) -> None:
    folders = {"pipelines/train": {"f1": 0.9}, "pipelines/score": {"f1": 0.8, "auc": 0.7}}
    gates = (
        "[tool.branchflow.gates.train.min]\nf1 = 0.85\n\n"
        "[tool.branchflow.gates.score.min]\nauc = 0.75\n"
    )
    repo = make_pipelines_repo(tmp_path / "repo", folders, gates)
    train = run_gate(repo, "main", env={}, pipeline="train")
    assert train.passed, train.lines()
    assert [c.text for c in train.checks] == ["`f1` is 0.9000, at least the floor 0.8500"]
    score = run_gate(repo, "main", env={}, pipeline="score")
    assert not score.passed
    assert [c.text for c in score.checks] == ["`auc` is 0.7000, below the floor 0.7500"]

    report = write_report(repo, repo / "report.md", "main", env={}, pipeline="score")
    assert not report.passed
    document = json.loads((repo / "report.json").read_text())
    assert sorted(m["name"] for m in document["metrics"]) == ["auc", "f1"]  # its own, unprefixed

    # Without a pipeline (none writes a model): every metric, colliding keys prefixed.
    names = {m.name for m in compare_all(repo)}
    assert names == {"pipelines/train/metrics.json:f1", "pipelines/score/metrics.json:f1", "auc"}


def compare_all(repo: Path) -> tuple:
    with open_dvc(repo) as dvc:
        return compare(dvc, None, None, {}).metrics


@pytest.mark.parametrize(
    ("gates", "message"),
    [
        ("[tool.branchflow.gates.nope.min]\nf1 = 0.5\n", "gates] names nope, which is no pipeline"),
        ("[tool.branchflow.gates.score.min]\nf1 = '0.5'\n", "gates.score] min: 'f1' must be"),
    ],
)
def test_a_gate_for_another_pipeline_is_checked(tmp_path: Path, gates: str, message: str) -> None:
    folders = {"pipelines/train": {"f1": 0.9}, "pipelines/score": {"f1": 0.8}}
    repo = make_pipelines_repo(tmp_path / "repo", folders, gates)
    with pytest.raises(BranchflowError, match=re.escape(message)):
        run_gate(repo, "main", env={}, pipeline="score")


def test_with_dvcs_output_the_stage_table_says_which_stages_ran_and_which_were_restored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`report --repro-log`: a changed stage DVC ran is `rerun`, one it restored from its
    run-cache `restored`, and one this build ran neither way (its lock entry committed as it
    is) `not run`, each from what a real `dvc repro` printed."""
    repo = make_pipelines_repo(tmp_path / "repo", {"pipelines/train": {"f1": 0.9}})
    sh("git", "checkout", "-q", "-b", "feature", cwd=repo)
    monkeypatch.chdir(repo)
    log = tmp_path / "repro.log"

    def repro(f1: float) -> list[dict]:
        params = repo / "pipelines/train/params.yaml"
        params.write_text(yaml.safe_dump({"train": {"f1": f1}}))
        done = sh("dvc", "repro", "pipelines/train/dvc.yaml", cwd=repo)
        log.write_text(done.stdout + done.stderr)
        args = ["report", "--base", "main", "--out", "report.md", "--repro-log", str(log)]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        return json.loads((repo / "report.json").read_text())["stages"]

    stage = "pipelines/train/dvc.yaml:train"
    why = ["param `train.f1` 0.9 → 0.95"]
    assert repro(0.95) == [{"stage": stage, "status": "rerun", "reasons": why}]
    repro(0.97)
    assert repro(0.95) == [{"stage": stage, "status": "restored", "reasons": why}]
    assert repro(0.95) == [{"stage": stage, "status": "not run", "reasons": why}]
    assert (
        "| `pipelines/train/dvc.yaml:train` | **not run here** |"
        in (repo / "report.md").read_text()
    )
