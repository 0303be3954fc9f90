"""The registry under concurrency and crashes, against real `mlflow server`s (no mocks): racing
`branchflow` processes, a killed client, a killed server, a lock left behind, a champion moved
outside branchflow, and `prune` on a server that two projects share.

Each test renames its copy of the tiny project, so its models, experiments and production
model are its own on the session's server."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path

import mlflow
import pytest

from branchflow.errors import BranchflowError
from branchflow.registry import champion
from branchflow.registry.champion import (
    CHAMPION,
    KEY_TIME,
    LOCK_SUFFIX,
    MOVE_TAG_PREFIX,
    PENDING,
    TOKEN_TAG,
    Move,
    history,
    promote,
    rollback,
)
from branchflow.registry.prune import prune
from branchflow.registry.register import CANDIDATE, register
from branchflow.tracking import LEASE_TAG, OWNER_TAG, PROJECT_TAG
from tests.conftest import MlflowServer, branch_names, on, sh
from tests.pyfunc_project import NAME, other_bytes

pytestmark = pytest.mark.usefixtures("registry_env")
MOVED = re.compile(r"version (\S+) -> (\S+) ")


def renamed(repo: Path, project: str) -> Path:
    """`repo` as the project `project`: its own base name, so its own MLflow names."""
    pyproject = repo / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace(f'name = "{NAME}"', f'name = "{project}"'))
    sh("git", "commit", "-q", "-am", f"rename to {project}", cwd=repo)
    return repo


def branchflow(repo: Path, *args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    """A real `branchflow` process, started now."""
    return subprocess.Popen(
        ["branchflow", *args],
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(processes: list[subprocess.Popen[str]]) -> list[tuple[int, str, str]]:
    outputs = [process.communicate(timeout=180) for process in processes]
    return [(p.returncode, out, err) for p, (out, err) in zip(processes, outputs, strict=True)]


def two_champions(repo: Path, branch: str) -> str:
    """Promote two registrations of `branch` (production versions 1, then 2); the production
    model's name."""
    first = register(repo, on(branch))
    promote(repo, f"models:/{first.model}@{CANDIDATE}", env=on(branch))
    other_bytes(repo)
    second = register(repo, on(branch))
    promote(repo, f"models:/{second.model}@{CANDIDATE}", env=on(branch))
    return branch_names(repo, branch).production_model


def lock_tags(owner: str, lease_until: float) -> dict[str, str]:
    """The tags of a lock as `branchflow promote` creates it (see docs/registry.md)."""
    return {OWNER_TAG: owner, LEASE_TAG: str(lease_until), TOKEN_TAG: uuid.uuid4().hex[:12]}


def chain(moves: list[Move]) -> list[tuple[str | None, str]]:
    """The (from, to) of each move, asserting each starts where the one before ended."""
    for before, after in pairwise(moves):
        assert after.from_version == before.to_version, moves
    return [(move.from_version, move.to_version) for move in moves]


def running_run(client: mlflow.MlflowClient, experiment: str, timeout: float = 90) -> str:
    """The id of the first RUNNING run of `experiment` (a name), waiting for it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = client.get_experiment_by_name(experiment)
        runs = (
            client.search_runs([found.experiment_id], "attributes.status = 'RUNNING'")
            if found
            else []
        )
        if runs:
            return runs[0].info.run_id
        time.sleep(0.05)
    pytest.fail(f"no run of {experiment} started within {timeout} s")


def assert_settled(client: mlflow.MlflowClient, repo: Path, branch: str, orphan: str) -> None:
    """The orphan is KILLED, no run of the branch runs, one version holds the bytes and is
    the candidate."""
    names = branch_names(repo, branch)
    experiment = client.get_experiment_by_name(names.experiment).experiment_id
    assert client.get_run(orphan).info.status == "KILLED"
    assert client.search_runs([experiment], "attributes.status = 'RUNNING'") == []
    versions = client.search_model_versions(f"name = '{names.model}'")
    assert len(versions) == 1
    assert client.get_model_version_by_alias(names.model, CANDIDATE).version == versions[0].version


@pytest.mark.e2e  # three `branchflow register` processes at once
def test_concurrent_registers_of_the_same_bytes_leave_one_version(
    repo: Path, client: mlflow.MlflowClient
) -> None:
    branch = "race/register"
    results = finish(
        [branchflow(repo, "register", "--format", "json", env=on(branch)) for _ in range(3)]
    )
    assert [code for code, _, _ in results] == [0, 0, 0], results
    registrations = [json.loads(out) for _, out, _ in results]
    assert len({(r["version"], r["run_id"]) for r in registrations}) == 1, registrations
    assert sum(r["created"] for r in registrations) == 1
    model, version, run_id = (registrations[0][key] for key in ("model", "version", "run_id"))
    assert [v.version for v in client.search_model_versions(f"name = '{model}'")] == [version]
    assert client.get_model_version_by_alias(model, CANDIDATE).version == version
    experiment = client.get_experiment_by_name(branch_names(repo, branch).experiment)
    runs = client.search_runs([experiment.experiment_id])  # active ones: the losers deleted theirs
    assert [(run.info.run_id, run.info.status) for run in runs] == [(run_id, "FINISHED")]
    logged = client.search_logged_models(experiment_ids=[experiment.experiment_id])
    assert [model.source_run_id for model in logged] == [run_id]  # and their logged models


@pytest.mark.e2e  # promote, rollback and promote processes at once
def test_racing_moves_of_the_champion_stay_a_chain(repo: Path, client: mlflow.MlflowClient) -> None:
    """Each command moves the champion it saw or fails saying it moved; the history stays a
    chain that ends at the champion, which is what the last successful command printed.

    A lock held for the first seconds (its lease then runs out) makes the three read the
    champion before any of them can move it, as commands started together on CI would."""
    branch = "race/moves"
    production = two_champions(renamed(repo, "race-moves"), branch)
    model = branch_names(repo, branch).model
    lock = lock_tags(f"{socket.gethostname()}:{os.getpid()}", time.time() + 8)
    client.create_registered_model(f"{production}{LOCK_SUFFIX}", tags=lock)
    commands = [
        ("rollback",),
        ("promote", f"models:/{production}/1"),
        ("promote", f"models:/{model}/1"),
    ]
    results = finish([branchflow(repo, *command, env=on(branch)) for command in commands])
    assert sum(code == 3 for code, _, _ in results) >= 1, results
    for code, out, err in results:  # stderr also holds MLflow's own "Copied version ..." lines
        assert "Traceback" not in err
        refused = err.startswith(f"error: {production}@{CHAMPION} moved") and err.count("\n") == 1
        assert code == 0 or (code == 3 and refused), (code, out, err)
    printed = [MOVED.search(out) for code, out, _ in results if code == 0]
    made = sorted(match.groups() for match in printed if match)
    assert made, results
    moves = chain(history(repo, on(branch)))
    assert moves[:2] == [(None, "1"), ("1", "2")]
    assert sorted(moves[2:]) == made
    assert client.get_model_version_by_alias(production, CHAMPION).version == moves[-1][1]
    assert client.search_registered_models(f"name = '{production}{LOCK_SUFFIX}'") == []


def test_a_champion_moved_outside_branchflow_stops_promote_and_rollback(
    repo: Path, client: mlflow.MlflowClient
) -> None:
    branch = "outside/ui"
    production = two_champions(renamed(repo, "outside-ui"), branch)
    client.set_registered_model_alias(production, CHAMPION, "1")  # as in the MLflow UI
    model = branch_names(repo, branch).model
    for move in (
        lambda: rollback(repo, env=on(branch)),
        lambda: promote(repo, f"models:/{model}/1", env=on(branch)),
    ):
        with pytest.raises(
            BranchflowError,
            match="is 1 but branchflow's last move set version 2: it was moved outside branchflow",
        ):
            move()
    assert len(history(repo, on(branch))) == 2
    client.set_registered_model_alias(production, CHAMPION, "2")  # what the error says to do
    assert (
        rollback(repo, env=on(branch)).from_version,
        client.get_model_version_by_alias(production, CHAMPION).version,
    ) == ("2", "1")


def recorded_move(client: mlflow.MlflowClient, move: Move, at: datetime, pending: bool) -> str:
    """Record `move` as a process whose clock reads `at` does (in the tag format of
    docs/registry.md); pending: as one leaves that dies right after. The record's key."""
    key = f"{MOVE_TAG_PREFIX}{at:{KEY_TIME}}.0dead0ff"
    record = {**dataclasses.asdict(move), **({PENDING: True} if pending else {})}
    client.set_registered_model_tag(move.model, key, json.dumps(record))
    return key


def crashed_move(client: mlflow.MlflowClient, move: Move) -> str:
    """What a process leaves that dies right after recording `move`, now."""
    return recorded_move(client, move, datetime.now(UTC), pending=True)


def test_a_crash_mid_move_leaves_a_history_rollback_can_trust(
    repo: Path, client: mlflow.MlflowClient
) -> None:
    """A move recorded but never made is ignored, then deleted; one whose alias moved before
    its process died counts, and is confirmed. Either way rollback undoes what happened."""
    branch = "crash/journal"
    production = two_champions(renamed(repo, "crash-journal"), branch)
    before = history(repo, on(branch))
    never = crashed_move(client, dataclasses.replace(before[-1], from_version="2", to_version="3"))
    assert history(repo, on(branch)) == before
    assert rollback(repo, env=on(branch)).to_version == "1"
    assert never not in client.get_registered_model(production).tags

    made = dataclasses.replace(before[-1], from_version="1", to_version="2", reason="died after")
    made_key = crashed_move(client, made)
    client.set_registered_model_alias(production, CHAMPION, "2")  # the move it made
    assert history(repo, on(branch))[-1] == made
    assert rollback(repo, env=on(branch)).to_version == "1"
    assert PENDING not in json.loads(client.get_registered_model(production).tags[made_key])
    moves = chain(history(repo, on(branch)))
    assert moves == [(None, "1"), ("1", "2"), ("2", "1"), ("1", "2"), ("2", "1")]
    assert client.get_model_version_by_alias(production, CHAMPION).version == "1"


def test_moves_after_one_from_a_host_whose_clock_runs_ahead_stay_in_order(
    repo: Path, client: mlflow.MlflowClient
) -> None:
    """A rollback made on a host an hour ahead, then a promote and a rollback made here: history
    keeps the order they were made in, so rollback still trusts it."""
    branch = "skew/clock"
    production = two_champions(renamed(repo, "skew-clock"), branch)
    ahead = datetime.now(UTC) + timedelta(hours=1)
    made = dataclasses.replace(
        history(repo, on(branch))[-1],
        action="rollback",
        from_version="2",
        to_version="1",
        when=ahead.isoformat(timespec="microseconds"),
    )
    recorded_move(client, made, ahead, pending=False)
    client.set_registered_model_alias(production, CHAMPION, "1")  # the move it made
    promote(repo, f"models:/{production}/2", env=on(branch))
    assert rollback(repo, env=on(branch)).to_version == "1"
    moves = history(repo, on(branch))
    assert chain(moves) == [(None, "1"), ("1", "2"), ("2", "1"), ("1", "2"), ("2", "1")]
    assert [move.action for move in moves[-3:]] == ["rollback", "promote", "rollback"]


def test_promote_reuses_the_production_copy_of_its_source(
    repo: Path, client: mlflow.MlflowClient
) -> None:
    """A copy left by a promote that died before moving the alias, or one an earlier promote
    made, is the version promoted: production holds one copy of each source."""
    branch = "crash/copy"
    renamed(repo, "crash-copy")
    first = register(repo, on(branch))
    production = branch_names(repo, branch).production_model
    source = f"models:/{first.model}/{first.version}"
    client.copy_model_version(source, production)  # what a promote that died after it leaves
    assert promote(repo, source, env=on(branch)).to_version == "1"
    other_bytes(repo)
    second = register(repo, on(branch))
    promote(repo, f"models:/{second.model}/{second.version}", env=on(branch))
    assert promote(repo, source, env=on(branch)).to_version == "1"
    copies = client.search_model_versions(f"name = '{production}'")
    assert sorted(version.version for version in copies) == ["1", "2"]
    assert chain(history(repo, on(branch))) == [(None, "1"), ("1", "2"), ("2", "1")]


def test_a_lock_whose_holder_is_gone_is_taken_over(repo: Path, client: mlflow.MlflowClient) -> None:
    """Left by a process of this host that died, or by another host whose lease ran out."""
    branch = "crash/lock"
    renamed(repo, "crash-lock")
    first = register(repo, on(branch))
    production = branch_names(repo, branch).production_model
    lock = f"{production}{LOCK_SUFFIX}"
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = {
        f"{socket.gethostname()}:{dead.pid}": time.time() + 600,
        "ci-runner-7:4242": time.time() + 1.5,
    }
    for owner, lease in stale.items():
        client.create_registered_model(lock, tags=lock_tags(owner, lease))
        started = time.monotonic()
        promote(repo, f"models:/{first.model}/{first.version}", env=on(branch))
        assert time.monotonic() - started < 15
        assert client.search_registered_models(f"name = '{lock}'") == []
    assert client.get_model_version_by_alias(production, CHAMPION).version == "1"


@pytest.mark.parametrize("lease", ["abc", "inf", "nan", ""])
def test_a_lock_with_a_lease_that_is_no_time_is_taken_over(
    repo: Path, client: mlflow.MlflowClient, lease: str
) -> None:
    """A lease tag someone else wrote (not a finite number) never held anything."""
    branch = f"crash/lease-{lease or 'empty'}"
    renamed(repo, f"lease-{lease or 'empty'}")
    first = register(repo, on(branch))
    production = branch_names(repo, branch).production_model
    tags = {**lock_tags("ci-runner-7:4242", 0), LEASE_TAG: lease}
    client.create_registered_model(f"{production}{LOCK_SUFFIX}", tags=tags)
    promote(repo, f"models:/{first.model}/{first.version}", env=on(branch))
    assert client.get_model_version_by_alias(production, CHAMPION).version == "1"


def test_takers_racing_for_the_lock_each_hold_it_alone(
    mlflow_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four threads take and release one lock 20 times each, polling every 10 ms: none fails
    (the server answers "does not exist" when a lock is released while it reports it taken) and
    no two hold it at once."""
    monkeypatch.setattr(champion, "LOCK_POLL_S", 0.01)
    production = f"race-lock-{uuid.uuid4().hex[:8]}_production"
    holders: list[int] = []
    overlaps: list[list[int]] = []
    errors: list[Exception] = []

    def take_turns(taker: int) -> None:
        client = mlflow.MlflowClient(mlflow_server, mlflow_server)
        for _ in range(20):
            try:
                with champion._lock(client, production):
                    holders.append(taker)
                    if len(holders) > 1:
                        overlaps.append(list(holders))
                    time.sleep(0.005)
                    holders.remove(taker)
            except Exception as exc:  # reported by the assertion below
                errors.append(exc)

    threads = [threading.Thread(target=take_turns, args=(taker,)) for taker in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and overlaps == []
    client = mlflow.MlflowClient(mlflow_server, mlflow_server)
    assert client.search_registered_models(f"name = '{production}{LOCK_SUFFIX}'") == []


@pytest.mark.e2e  # a `branchflow register` process, killed
def test_a_killed_register_leaves_no_running_run(repo: Path, client: mlflow.MlflowClient) -> None:
    branch = "crash/client"
    process = branchflow(repo, "register", env=on(branch))
    orphan = running_run(client, branch_names(repo, branch).experiment)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert client.get_run(orphan).info.status == "RUNNING"
    registration = register(repo, on(branch))
    assert registration.created
    assert_settled(client, repo, branch, orphan)


@pytest.mark.e2e  # a dedicated server, killed while a `branchflow register` process uses it
def test_a_server_killed_mid_register_leaves_no_running_run(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    branch = "crash/server"
    home = Path(tempfile.mkdtemp(prefix="branchflow-crash-"))
    server = MlflowServer.start(home)
    try:
        server.wait_healthy()
        fast = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_TRACKING_URI": server.uri}
        process = branchflow(repo, "register", env=on(branch, **fast))
        orphan = running_run(
            mlflow.MlflowClient(server.uri, server.uri), branch_names(repo, branch).experiment
        )
        server.kill()
        _, err = process.communicate(timeout=120)
        assert process.returncode == 3
        # MLflow's own warnings may come first, when the model was logged before the kill
        assert err.splitlines()[-1].startswith("error: ") and "Traceback" not in err, err
        server = MlflowServer.start(home)  # the same database and artifacts
        server.wait_healthy()
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
        register(repo, on(branch))
        assert_settled(mlflow.MlflowClient(server.uri, server.uri), repo, branch, orphan)
    finally:
        server.stop()


def test_prune_removes_only_its_own_projects_experiments(
    pyfunc_repo: Path, tmp_path: Path, client: mlflow.MlflowClient
) -> None:
    """Two projects share a server and a branch name; experiments from before the project tag
    (none) are pruned only by the project whose name they carry."""
    branch = "shared/merged"
    repos = {}
    for project in ("prune-one", "prune-two"):
        shutil.copytree(pyfunc_repo, tmp_path / project, symlinks=True)
        repos[project] = renamed(tmp_path / project, project)
        register(repos[project], on(branch))
    one, two = (
        client.get_experiment_by_name(branch_names(r, branch).experiment) for r in repos.values()
    )
    assert (one.tags[PROJECT_TAG], two.tags[PROJECT_TAG]) == ("prune-one", "prune-two")

    for untagged in (False, True):
        if untagged:
            for experiment in (one, two):
                client.delete_experiment_tag(experiment.experiment_id, PROJECT_TAG)
        plan = prune(repos["prune-one"], branch, dry_run=True, env=on(branch))
        assert plan.experiments == (one.name,)
    prune(repos["prune-one"], branch, env=on(branch))
    assert client.get_experiment(one.experiment_id).lifecycle_stage == "deleted"
    assert client.get_experiment(two.experiment_id).lifecycle_stage == "active"
    two_model = branch_names(repos["prune-two"], branch).model
    assert len(client.search_model_versions(f"name = '{two_model}'")) == 1
