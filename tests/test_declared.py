"""Production declared in git, on a real git repository and a real `mlflow server` with its
basic-auth app: the PR token registers, production's token prepares and reconciles, and
`champion` follows the committed declaration through merges, a hand-moved alias and a revert."""

from __future__ import annotations

import concurrent.futures
import json
from pathlib import Path

import mlflow
import pytest
import yaml

from branchflow.registry.champion import CHAMPION, SOURCE_TAG, history
from branchflow.registry.register import CANDIDATE, register
from tests.conftest import on, sh
from tests.test_registry_auth import as_user, auth_server, branchflow  # noqa: F401 (a fixture)

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("registry_env")]
PRODUCTION = "declared_production"
DECLARED = "production.json"
BRANCH = "pr/51"


@pytest.fixture
def declared(repo: Path) -> Path:
    """The pyfunc project with production declared in `production.json`, on `main`."""
    with (repo / "pyproject.toml").open("a") as pyproject:
        pyproject.write(
            f'\n[tool.branchflow]\nproduction_model = "{PRODUCTION}"\n'
            f'\n[tool.branchflow.production]\ndeclared = "{DECLARED}"\n'
        )
    sh("git", "commit", "-q", "-am", "production is declared in git", cwd=repo)
    return repo


def merge(repo: Path, branch: str, message: str) -> str:
    """Commit the declaration on `branch` and merge it into main as a PR would; the merge SHA."""
    sh("git", "checkout", "-q", "-b", branch, cwd=repo)
    sh("git", "add", DECLARED, cwd=repo)
    sh("git", "commit", "-q", "-m", message, cwd=repo)
    sh("git", "checkout", "-q", "main", cwd=repo)
    sh("git", "merge", "-q", "--no-ff", branch, "-m", f"Merge {branch}", cwd=repo)
    return sh("git", "rev-parse", "HEAD", cwd=repo).stdout.strip()


def champion_of(uri: str) -> str | None:
    return mlflow.MlflowClient(uri, uri).get_registered_model(PRODUCTION).aliases.get(CHAMPION)


def candidate(repo: Path, threshold: float) -> str:
    """Train the threshold model at `threshold` and register it as the PR branch's candidate."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["threshold"] = threshold
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    sh("dvc", "repro", "-q", cwd=repo)
    sh("git", "commit", "-q", "-am", f"threshold {threshold}", cwd=repo)
    registration = register(repo, on(BRANCH))
    return f"models:/{registration.model}@{CANDIDATE}"


def test_champion_follows_the_declaration_through_merges_drift_and_a_revert(
    declared: Path,
    auth_server: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    repo = declared
    pr_bot = as_user(monkeypatch, auth_server, "pr-bot")
    first = candidate(repo, 0.55)

    # Production's token prepares the promotion: a copy and the file, no alias yet.
    release = as_user(monkeypatch, auth_server, "release")
    body = tmp_path / "body.md"
    prepared = branchflow(
        repo, "promote", "--declare", first, "--body", str(body), env=on(BRANCH, **release)
    )
    assert prepared.returncode == 0, prepared.stderr
    pin = json.loads((repo / DECLARED).read_text())
    assert pin["name"] == PRODUCTION and pin["version"] == "1"
    assert prepared.stdout.splitlines()[-1] == (
        f"{DECLARED}: declares models:/{PRODUCTION}/1 (copy of {first.split('@')[0]}/1); "
        "merge it to make it champion"
    )
    assert f"models:/{PRODUCTION}/1" in body.read_text() and "sha256" in body.read_text()
    assert champion_of(auth_server) is None
    merged = merge(repo, "promote-1", "Promote threshold 0.55")

    # The PR token alone cannot apply it; production's token can.
    refused = branchflow(repo, "reconcile", "--restore", env=on("main", **pr_bot))
    assert refused.returncode == 3 and "permission denied for pr-bot" in refused.stderr
    assert champion_of(auth_server) is None
    applied = branchflow(repo, "reconcile", "--restore", env=on("main", **release))
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.strip() == (
        f"restored: {PRODUCTION}@{CHAMPION} none -> 1, as {DECLARED} declares at {merged[:7]}"
    )
    assert champion_of(auth_server) == "1"
    checked = branchflow(repo, "reconcile", env=on("main", **pr_bot))  # read-only: any token
    assert checked.returncode == 0, checked.stderr
    assert (
        checked.stdout.strip() == f"in sync: {PRODUCTION}@{CHAMPION} is 1, as {DECLARED} declares"
    )

    # A second promotion, the same way; the scoring pipeline's pin is the declaration itself.
    as_user(monkeypatch, auth_server, "pr-bot")
    second = candidate(repo, 0.6)
    as_user(monkeypatch, auth_server, "release")
    prepared = branchflow(repo, "promote", "--declare", second, env=on(BRANCH, **release))
    assert prepared.returncode == 0, prepared.stderr
    merge(repo, "promote-2", "Promote threshold 0.6")
    assert branchflow(repo, "reconcile", "--restore", env=on("main", **release)).returncode == 0
    assert champion_of(auth_server) == "2"
    pinned = branchflow(repo, "pin", "--out", DECLARED, env=on("main", **release))
    assert pinned.returncode == 0 and "already pins" in pinned.stdout, pinned.stderr

    # An alias moved by hand is drift: reported (exit 1), then restored.
    mlflow.MlflowClient(auth_server, auth_server).set_registered_model_alias(
        PRODUCTION, CHAMPION, 1
    )
    drift = branchflow(repo, "reconcile", env=on("main", **release))
    assert drift.returncode == 1
    assert drift.stdout.strip() == (
        f"drift: {PRODUCTION}@{CHAMPION} is 1, but {DECLARED} declares 2; "
        "`branchflow reconcile --restore` moves it back"
    )
    declaration = (repo / DECLARED).read_text()
    repinned = branchflow(repo, "pin", "--out", DECLARED, env=on("main", **release))
    assert repinned.returncode == 3, repinned.stdout
    assert repinned.stderr.strip() == (
        f"error: {DECLARED} declares production (version 2), but @{CHAMPION} is version 1: "
        "run `branchflow reconcile --restore`, or promote with --declare"
    )
    assert (repo / DECLARED).read_text() == declaration
    assert branchflow(repo, "reconcile", "--restore", env=on("main", **release)).returncode == 0
    assert champion_of(auth_server) == "2"

    # Rollback is a revert; two reconciles at once make one move.
    sh("git", "revert", "--no-edit", "-m", "1", "HEAD~0", cwd=repo)
    assert json.loads((repo / DECLARED).read_text())["version"] == "1"
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        runs = list(
            pool.map(
                lambda _: branchflow(repo, "reconcile", "--restore", env=on("main", **release)),
                range(2),
            )
        )
    assert [run.returncode for run in runs] == [0, 0], [run.stderr for run in runs]
    assert sorted(run.stdout.split(":")[0] for run in runs) == ["in sync", "restored"]
    assert champion_of(auth_server) == "1"
    moves = history(repo, on("main", **release))
    assert [(m.action, m.from_version, m.to_version) for m in moves] == [
        ("reconcile", None, "1"),
        ("reconcile", "1", "2"),
        ("reconcile", "1", "2"),  # the hand-moved alias, restored
        ("reconcile", "2", "1"),  # the revert
    ]
    version = mlflow.MlflowClient(auth_server, auth_server).get_model_version(PRODUCTION, "1")
    assert moves[0].source == version.tags[SOURCE_TAG]
    listed = branchflow(repo, "history", env=on("main", **release))
    assert "Promote threshold 0.6" in listed.stdout and "Revert" in listed.stdout


def test_with_production_declared_direct_promote_and_rollback_are_refused(
    declared: Path,
    auth_server: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    release = as_user(monkeypatch, auth_server, "release")
    for args, fix in [
        (
            ["promote", "models:/x@candidate"],
            "run `branchflow promote --declare models:/x@candidate`",
        ),
        (["rollback"], f"revert the commit that last changed {DECLARED}"),
    ]:
        refused = branchflow(declared, *args, env=on("main", **release))
        assert refused.returncode == 3, refused.stderr
        assert refused.stderr.count("\n") == 1 and fix in refused.stderr, refused.stderr
    broken = declared / DECLARED
    broken.write_text('{"name": "other", "version": "1", "sha256": "' + "0" * 64 + '"}')
    refused = branchflow(declared, "reconcile", env=on("main", **release))
    assert refused.returncode == 3
    assert (
        f"{DECLARED}: names 'other', but the production model is '{PRODUCTION}'" in refused.stderr
    )
