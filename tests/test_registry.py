"""register, promote, rollback, history and prune against a real MLflow server (no mocks), on
the tiny pyfunc project of `tests/pyfunc_project.py`; one e2e test registers the example's CNN."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from branchflow.cli import main
from branchflow.errors import BranchflowError
from branchflow.registry.champion import CHAMPION, history, promote, rollback
from branchflow.registry.prune import prune
from branchflow.registry.register import CANDIDATE, register
from branchflow.settings import load_settings
from branchflow.tracking import store_for
from tests.conftest import EVIL, ROOT, branch_names, free_port, on, sh
from tests.pyfunc_project import DATA, EXAMPLE, METRICS, MODEL, PLOT, other_bytes

FRAMES = "data/interim/frames/vid0000.npy"  # a frame stack of the example's data


pytestmark = pytest.mark.usefixtures("registry_env")


def predict(model_uri: str, model_input: np.ndarray) -> list[object]:
    return mlflow.pyfunc.load_model(model_uri).predict(model_input).tolist()


def test_promote_then_rollback_restores_the_champion(
    repo: Path, client: mlflow.MlflowClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The only test that moves the tiny project's champion on the session's server."""
    branch = "release/flow"
    production = branch_names(repo, branch).production_model
    first = register(repo, on(branch))
    promote(repo, f"models:/{first.model}@{CANDIDATE}", "first", on(branch, GITHUB_ACTOR="ana"))
    other_bytes(repo)
    second = register(repo, on(branch))
    assert (first.created, second.created) == (True, True)
    assert client.get_model_version_by_alias(first.model, CANDIDATE).version == second.version
    promote(repo, f"models:/{second.model}/{second.version}", "better", on(branch))
    unchanged = promote(repo, f"models:/{second.model}@{CANDIDATE}", "again", on(branch))
    assert unchanged.from_version == unchanged.to_version

    monkeypatch.chdir(repo)
    monkeypatch.setenv("BRANCHFLOW_BRANCH", branch)
    result = CliRunner().invoke(main, ["rollback", "--reason", "regression"])
    assert result.exit_code == 0, result.output
    assert result.output == f"{production}@{CHAMPION}: version 2 -> 1 (rollback)\n"
    champion = client.get_model_version_by_alias(production, CHAMPION)
    assert (champion.version, champion.tags["model_sha256"]) == ("1", first.model_sha256)
    with pytest.raises(BranchflowError, match="no earlier champion to roll back to"):
        rollback(repo, env=on(branch))

    moves = history(repo, on(branch))
    assert [(m.action, m.from_version, m.to_version, m.reason) for m in moves] == [
        ("promote", None, "1", "first"),
        ("promote", "1", "2", "better"),
        ("rollback", "2", "1", "regression"),
    ]
    assert [m.source for m in moves] == [
        f"models:/{first.model}/{first.version}",
        f"models:/{second.model}/{second.version}",
        None,
    ]
    head = sh("git", "rev-parse", "HEAD", cwd=repo).stdout.strip()
    assert moves[0].who == "ana"
    assert all(m.who and m.when and m.commit == head for m in moves)
    listed = CliRunner().invoke(main, ["history", "--format", "json"])
    assert json.loads(listed.output) == [dataclasses.asdict(m) for m in moves]

    # The champion serves the first model, which answers otherwise than the second.
    example = np.load(repo / EXAMPLE)
    served = predict(f"models:/{production}@{CHAMPION}", example)
    assert served == predict(f"models:/{first.model}/{first.version}", example)
    assert served != predict(f"models:/{second.model}/{second.version}", example)

    # Both versions back production copies: prune keeps them and their experiment.
    plan = prune(repo, branch, dry_run=True, env=on(branch))
    assert (plan.versions, plan.kept_versions) == ((), ("1", "2"))
    assert (plan.experiments, plan.kept_experiments) == (
        (),
        (branch_names(repo, branch).experiment,),
    )


def test_branch_names_register_under_distinct_names(
    repo: Path, client: mlflow.MlflowClient
) -> None:
    """The hardest names of BRANCHES (test_context checks every one offline) on a real server."""
    branches = [EVIL, "user/ünïcode", "b" * 300, "Feature", "feature"]
    registered = {branch: register(repo, on(branch)) for branch in branches}
    assert len({r.model for r in registered.values()}) == len(branches)
    for branch, registration in registered.items():
        version = client.get_model_version(registration.model, registration.version)
        assert version.tags["branch"] == branch
        assert client.get_model_version_by_alias(version.name, CANDIDATE).version == version.version
        run = client.get_run(version.run_id)
        assert run.data.tags["branch"] == branch
        assert client.get_experiment(run.info.experiment_id).tags["branch"] == branch
    assert not (repo / "pwned").exists()


def test_a_run_records_dvc_state_and_the_version_its_provenance(
    repo: Path, client: mlflow.MlflowClient
) -> None:
    registration = register(repo, on("provenance"))
    version = client.get_model_version(registration.model, registration.version)
    run_id = registration.run_id
    run = client.get_run(run_id)
    data_md5 = yaml.safe_load((repo / f"{DATA}.dvc").read_text())["outs"][0]["md5"]
    lock = hashlib.sha256((repo / "dvc.lock").read_bytes()).hexdigest()
    model = hashlib.sha256((repo / MODEL).read_bytes()).hexdigest()
    assert (run.data.params["train.seed"], run.data.params["train.threshold"]) == ("0", "0.5")
    assert run.data.metrics == {"model.accuracy": 1.0, "model.points": 4.0}
    dirty = bool(sh("git", "status", "--porcelain", cwd=repo).stdout.strip())
    assert {key: run.data.tags[key] for key in ("data_hash", "dvc_lock_sha256", "dirty")} == {
        "data_hash": data_md5,
        "dvc_lock_sha256": lock,
        "dirty": str(dirty).lower(),
    }
    assert version.tags["model_sha256"] == model
    assert version.tags["metric.model.accuracy"] == "1.0"
    assert "metric.model.points" not in version.tags  # not a key metric
    logged = {a.path for folder in ("", "reports") for a in client.list_artifacts(run_id, folder)}
    assert {"dvc.lock", PLOT} <= logged


def test_same_model_bytes_register_once(
    repo: Path, client: mlflow.MlflowClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = register(repo, on("idempotent"))
    monkeypatch.chdir(repo)
    monkeypatch.setenv("BRANCHFLOW_BRANCH", "idempotent")
    result = CliRunner().invoke(main, ["register"])
    assert result.exit_code == 0, result.output
    assert (
        f"{first.model} version {first.version} already holds this model package" in result.output
    )
    assert len(client.search_model_versions(f"name = '{first.model}'")) == 1
    experiment = client.get_experiment_by_name(branch_names(repo, "idempotent").experiment)
    assert len(client.search_runs([experiment.experiment_id])) == 1


PACKAGE_EDITS: dict[str, Callable[[Path], None]] = {
    "signature": lambda repo: edit(
        repo, "pyproject.toml", "shape = [-1] }", 'shape = [-1] }, name = "x"'
    ),
    "input_example": lambda repo: np.save(repo / EXAMPLE, np.array([0.2, 0.9])),
    "pip_requirements": lambda repo: edit(repo, "pyproject.toml", '"numpy"]', '"numpy", "pyyaml"]'),
    "python_model": lambda repo: edit(repo, "serve.py", "import json", "import json  # edited"),
    "code_paths": lambda repo: edit(
        repo,
        "pyproject.toml",
        'python_model = "serve.py"',
        'python_model = "serve.py"\ncode_paths = ["serve.py"]',
    ),
}


def edit(repo: Path, path: str, old: str, new: str) -> None:
    text = (repo / path).read_text()
    assert old in text
    (repo / path).write_text(text.replace(old, new, 1))


def test_a_change_to_the_package_but_not_the_weights_registers_a_version(
    repo: Path, client: mlflow.MlflowClient
) -> None:
    """The registration key covers the whole package: each change is a new version; the same
    package again is none."""
    branch = "package/edits"
    first = register(repo, on(branch))
    for name, change in PACKAGE_EDITS.items():
        change(repo)
        registration = register(repo, on(branch))
        assert registration.created, name
        assert registration.model_sha256 == first.model_sha256, name
    assert not register(repo, on(branch)).created
    versions = client.search_model_versions(f"name = '{first.model}'")
    assert len(versions) == 1 + len(PACKAGE_EDITS)
    assert len({v.tags["package_sha256"] for v in versions}) == len(versions)


def test_a_version_without_the_package_key_is_registered_once_more(
    repo: Path, client: mlflow.MlflowClient
) -> None:
    """Versions registered before `package_sha256` (only `model_sha256`) are not matched."""
    first = register(repo, on("package/old"))
    client.delete_model_version_tag(first.model, first.version, "package_sha256")
    second = register(repo, on("package/old"))
    assert (second.created, second.version) == (True, "2")
    assert not register(repo, on("package/old")).created


def test_unreachable_server_fails_fast_in_one_line(repo: Path, client: mlflow.MlflowClient) -> None:
    """The retry settings a user gives win over branchflow's (here: one retry, no backoff)."""
    uri = f"http://127.0.0.1:{free_port()}"
    retries = {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
        "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0",
    }
    started = time.monotonic()
    result = subprocess.run(
        ["branchflow", "register"],
        cwd=repo,
        env=on("unreachable", MLFLOW_TRACKING_URI=uri, **retries),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert time.monotonic() - started < 30
    assert result.returncode == 3
    assert result.stderr.startswith(
        f"error: cannot reach MLflow tracking server at {uri} (tried 2 times); "
    )
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    model = branch_names(repo, "unreachable").model
    assert client.search_registered_models(f"name = '{model}'") == []


@pytest.mark.parametrize(("path", "stage"), [(MODEL, "train"), (METRICS, "evaluate")])
def test_a_missing_output_names_the_stage_that_writes_it(
    repo: Path,
    client: mlflow.MlflowClient,
    monkeypatch: pytest.MonkeyPatch,
    path: str,
    stage: str,
) -> None:
    (repo / path).unlink()
    monkeypatch.chdir(repo)
    monkeypatch.setenv("BRANCHFLOW_BRANCH", f"missing/{stage}")
    result = CliRunner().invoke(main, ["register"])
    assert result.exit_code == 3
    assert result.output == f"error: {path} not found; run `dvc repro {stage}`\n"
    model = branch_names(repo, f"missing/{stage}").model
    assert client.search_registered_models(f"name = '{model}'") == []


@pytest.mark.e2e  # two `branchflow register` processes at once
def test_two_branches_register_concurrently(repo: Path, client: mlflow.MlflowClient) -> None:
    branches = ["concurrent/one", "concurrent/two"]
    processes = [
        subprocess.Popen(
            ["branchflow", "register", "--format", "json"],
            cwd=repo,
            env=on(branch),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for branch in branches
    ]
    outputs = [process.communicate(timeout=180) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    head = sh("git", "rev-parse", "HEAD", cwd=repo).stdout.strip()
    for branch, (stdout, _) in zip(branches, outputs, strict=True):
        registration = json.loads(stdout)
        version = client.get_model_version(registration["model"], registration["version"])
        assert version.tags["branch"] == branch
        assert version.tags["commit"] == head
        assert version.tags["model_sha256"] == registration["model_sha256"]
        assert client.get_run(registration["run_id"]).data.tags["branch"] == branch


def test_prune_keeps_versions_an_alias_still_uses(repo: Path, client: mlflow.MlflowClient) -> None:
    branch = "prune/merged"
    first = register(repo, on(branch))
    other_bytes(repo)
    second = register(repo, on(branch))
    client.set_registered_model_alias(first.model, "staging", first.version)
    experiment = branch_names(repo, branch).experiment

    dry = prune(repo, branch, dry_run=True, env=on(branch))
    assert (dry.versions, dry.kept_versions) == ((second.version,), (first.version,))
    assert len(client.search_model_versions(f"name = '{first.model}'")) == 2
    prune(repo, branch, env=on(branch))
    assert [v.version for v in client.search_model_versions(f"name = '{first.model}'")] == ["1"]
    assert client.get_experiment_by_name(experiment).lifecycle_stage == "active"

    client.delete_registered_model_alias(first.model, "staging")
    final = prune(repo, branch, env=on(branch))
    assert (final.versions, final.experiments) == ((first.version,), (experiment,))
    assert client.search_registered_models(f"name = '{first.model}'") == []
    assert client.get_experiment_by_name(experiment).lifecycle_stage == "deleted"

    # The branch comes back: its experiment is restored, its model registered afresh.
    assert register(repo, on(branch)).created
    assert client.get_experiment_by_name(experiment).lifecycle_stage == "active"


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("runs:/0123/model", "is not a model version URI"),
        ("models:/no_such_model@candidate", "does not exist in the registry"),
    ],
)
def test_promote_rejects_what_it_cannot_resolve(repo: Path, uri: str, message: str) -> None:
    with pytest.raises(BranchflowError, match=message):
        promote(repo, uri, env=on("promote/errors"))


def test_without_a_tracking_uri_the_store_is_local_to_the_project(tmp_path: Path) -> None:
    store = store_for(tmp_path, {})
    assert store.uri == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert store.artifact_root == (tmp_path.resolve() / "mlartifacts").as_uri()
    assert store_for(tmp_path, {"MLFLOW_TRACKING_URI": "http://h:5000"}).artifact_root is None


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('artifacts = { model = "m.pt" }', "needs python_model"),
        ('python_model = "s.py"\nartefacts = {}', "did you mean 'artifacts'"),
        ('python_model = "s.py"\ncode_paths = "src"', "code_paths must be a list"),
        ('python_model = "s.py"\nsignature = { outputs = [] }', "signature must be a table"),
    ],
)
def test_model_settings_reject_mistakes(tmp_path: Path, table: str, message: str) -> None:
    (tmp_path / "pyproject.toml").write_text(f"[tool.branchflow.model]\n{table}\n")
    with pytest.raises(BranchflowError, match=message):
        load_settings(tmp_path)


@pytest.mark.e2e
def test_the_example_champion_maps_the_defects_of_a_frame_stack(
    reproduced_repo: Path, copy_repo: Callable[[Path], Path]
) -> None:
    """The example's CNN, registered and promoted, serves `Detector`'s defect map of real frames,
    which finds the labelled bad pixels; its input example is a small frame stack."""
    from badpixels.model import Detector

    path = ROOT / load_settings(ROOT).model.input_example
    example = np.load(path)
    assert path.stat().st_size < 100_000
    assert (example.ndim, example.dtype) == (3, np.uint8)

    repo, branch = copy_repo(reproduced_repo), "release/example"
    registration = register(repo, on(branch))
    promote(repo, f"models:/{registration.model}@{CANDIDATE}", "e2e", on(branch))
    production = branch_names(repo, branch).production_model
    frames = np.load(repo / FRAMES)
    found = mlflow.pyfunc.load_model(f"models:/{production}@{CHAMPION}").predict(frames)
    assert np.array_equal(found, Detector(repo / "models/model.pt").detect(frames))
    with (repo / "data/raw/toy/labels.csv").open(newline="") as handle:
        truth = [
            (int(r["y"]), int(r["x"])) for r in csv.DictReader(handle) if r["video"] == "vid0000"
        ]
    assert truth and sum(found[y, x] > 0 for y, x in truth) >= 0.8 * len(truth)


@pytest.mark.parametrize("record", ["not json", '{"action": "promote"}', "[1]", "[" * 5000])
def test_a_move_record_branchflow_did_not_write_is_one_line(
    repo: Path, client: mlflow.MlflowClient, record: str
) -> None:
    from tests.test_registry_races import renamed

    branch = "crafted/moves"
    renamed(repo, f"crafted-{hashlib.sha256(record.encode()).hexdigest()[:8]}")
    production = branch_names(repo, branch).production_model
    client.create_registered_model(production, tags={"branchflow.move.20260101T000000Z.x": record})
    for command in (history, rollback):
        with pytest.raises(
            BranchflowError, match="is not a move record branchflow wrote"
        ) as caught:
            command(repo, env=on(branch))
        assert "\n" not in str(caught.value)
