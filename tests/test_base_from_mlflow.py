"""The base's metrics from MLflow: when neither git, the DVC cache nor a remote holds the base
commit's metrics files, `report` and `gate` compare with the run `branchflow register` logged
for that commit. Real git, DVC and a local sqlite MLflow store."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from branchflow.cli import main
from branchflow.registry.register import register
from branchflow.report.compare import compare, open_dvc, resolve_base
from branchflow.report.document import write_report
from branchflow.tracking import BRANCH_TAG, PROJECT_TAG
from tests.conftest import built_repo, hide_ci_variables, sh
from tests.pyfunc_project import METRICS, make_pyfunc_repo

# Points (0.1, 0), (0.4, 0), (0.7, 1), (0.9, 1): main's threshold 0.5 classifies all four.
GATE = '\n[tool.branchflow.gate.max_drop_vs_base]\n"model.accuracy" = 0.01\n'


@pytest.fixture(autouse=True)
def no_ci_env(monkeypatch: pytest.MonkeyPatch) -> None:
    hide_ci_variables(monkeypatch, "MLFLOW_TRACKING_URI")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`main` of the pyfunc project with its metrics file DVC-cached and the gate above,
    registered (accuracy 1.0) into the project's own `mlflow.db`; its run id in `run_id.txt`
    beside it."""

    def make(repo: Path) -> None:
        make_pyfunc_repo(repo)
        pipeline = yaml.safe_load((repo / "dvc.yaml").read_text())
        pipeline["stages"]["evaluate"]["metrics"] = [METRICS]
        (repo / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
        with (repo / "pyproject.toml").open("a") as handle:
            handle.write(GATE)
        sh("git", "rm", "-q", "--cached", METRICS, cwd=repo)
        sh("dvc", "repro", "-q", "-f", cwd=repo)
        sh("git", "add", "-A", cwd=repo)
        sh("git", "commit", "-q", "-m", "main: cached metrics, a base rule", cwd=repo)
        with pytest.MonkeyPatch.context() as patch:
            hide_ci_variables(patch, "MLFLOW_TRACKING_URI")
            registration = register(repo, os.environ)
        assert registration.created
        (repo.parent / "run_id.txt").write_text(str(registration.run_id))

    return built_repo(tmp_path_factory, "registered", make)


def branch(registered: Path, to: Path, threshold: float) -> Path:
    """A copy of `registered` on a branch with `threshold`, reproduced; DVC's cache then wiped
    (and no remote), so only MLflow holds main's metrics."""
    repo = to / "repo"
    shutil.copytree(registered, repo, symlinks=True)
    sh("git", "checkout", "-q", "-b", "feature", cwd=repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["threshold"] = threshold
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    sh("dvc", "repro", "-q", cwd=repo)
    shutil.rmtree(repo / ".dvc" / "cache")
    return repo


@pytest.mark.parametrize(
    ("threshold", "exit_code", "line"),
    [
        (0.45, 0, "ok: `model.accuracy` vs main: 1.0000 → 1.0000, within the 0.0100 drop allowed"),
        (
            0.8,
            1,
            "FAIL: `model.accuracy` got worse by 0.2500 vs main (1.0000 → 0.7500); "
            "at most 0.0100 allowed",
        ),
    ],
    ids=["within", "worse"],
)
def test_the_gate_judges_against_the_base_commits_registered_run(
    registered: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    threshold: float,
    exit_code: int,
    line: str,
) -> None:
    repo = branch(registered, tmp_path, threshold)
    monkeypatch.chdir(repo)
    result = CliRunner().invoke(main, ["gate", "--base", "main"])
    assert result.exit_code == exit_code, result.output
    assert line in result.output.splitlines()
    assert "cannot be checked" not in result.output


def test_the_report_shows_the_registered_base_metrics(registered: Path, tmp_path: Path) -> None:
    repo = branch(registered, tmp_path, 0.8)
    verdict = write_report(repo, repo / "report.md", "main", env=os.environ)
    assert not verdict.passed
    document = json.loads((repo / "report.json").read_text())
    assert document["base"]["metrics_found"] is True
    assert document["base"]["metrics_missing"] is None
    accuracy = next(m for m in document["metrics"] if m["name"] == "model.accuracy")
    assert (accuracy["value"], accuracy["base"], accuracy["change"]) == (0.75, 1.0, -0.25)
    assert "first run" not in (repo / "report.md").read_text()
    with open_dvc(repo) as dvc:
        comparison = compare(dvc, resolve_base(repo, "main"), "threshold_production", os.environ)
    assert comparison.base_run == (registered.parent / "run_id.txt").read_text()


def test_without_a_run_of_the_base_commit_the_gate_says_what_was_searched(
    registered: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = branch(registered, tmp_path, 0.45)
    # A new base commit with the same files: the registered run is of its parent only.
    tree = "main^{tree}"
    child = sh("git", "commit-tree", tree, "-p", "main", "-m", "unregistered", cwd=repo).stdout
    sh("git", "update-ref", "refs/heads/main", child.strip(), cwd=repo)
    main_sha = child[:7]
    monkeypatch.chdir(repo)
    result = CliRunner().invoke(main, ["gate", "--base", "main"])
    assert result.exit_code == 1, result.output
    assert result.output.splitlines()[1] == (
        f"FAIL: max_drop_vs_base rules cannot be checked: the base's metrics ({METRICS} at main, "
        f"{main_sha}) are in neither git, this DVC cache, its remote nor a finished `branchflow "
        "register` run of that commit from a clean workspace in the main or dev branch's "
        "experiment in MLflow at "
        f"sqlite:///{repo.resolve() / 'mlflow.db'}: run `dvc fetch --all-branches --type "
        "metrics` with the remote that holds them, or `dvc push` or `branchflow register` from "
        "the base's build"
    )
    assert "first run" not in result.output


def test_a_run_of_the_base_commit_outside_the_base_builds_experiments_is_not_the_base(
    registered: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any token may log a run tagged with main's commit, newer and better for its branch, in an
    experiment it made and tagged as the project's: the gate still judges against the run of
    main's own build, and says which run that was."""
    import mlflow

    repo = branch(registered, tmp_path, 0.8)  # accuracy 0.75 against main's 1.0
    real = (registered.parent / "run_id.txt").read_text()
    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    trusted = client.get_run(real)
    forged = client.create_experiment(
        "training_threshold_pr-7", tags={PROJECT_TAG: "threshold", BRANCH_TAG: "pr-7"}
    )
    run = client.create_run(forged, tags=dict(trusted.data.tags))
    client.log_metric(run.info.run_id, "model.accuracy", 0.75)
    client.set_terminated(run.info.run_id)
    monkeypatch.chdir(repo)
    result = CliRunner().invoke(main, ["gate", "--base", "main"])
    assert result.exit_code == 1, result.output
    assert "got worse by 0.2500 vs main (1.0000 → 0.7500)" in result.output
    experiment = client.get_experiment(trusted.info.experiment_id).name
    assert f"note: main's metrics: MLflow run `{real}` in experiment `{experiment}`" in (
        result.output.splitlines()
    )
