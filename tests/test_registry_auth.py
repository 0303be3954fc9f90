"""PR builds cannot move production: a real `mlflow server --app-name basic-auth` (MLflow's own
auth app, `default_permission = READ`) with a `pr-bot` and a `release` account, of which only
`release` may edit the production model."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
import requests
from mlflow.entities.model_registry import ModelVersion

from branchflow.registry.champion import (
    CHAMPION,
    FILES_SHA_TAG,
    LOCK_NAME_TAG,
    LOCK_SUFFIX,
    SOURCE_TAG,
)
from branchflow.registry.package import tree_sha256
from branchflow.registry.register import CANDIDATE, register
from branchflow.report.compare import find_champion
from branchflow.tracking import LEASE_TAG, OWNER_TAG
from tests.conftest import MlflowServer, branch_names, on
from tests.test_registry_races import renamed

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("registry_env")]
ADMIN = ("admin", "admin-password-0")
USERS = {"pr-bot": "pr-bot-password-0", "release": "release-password-0"}
AUTH_CONFIG = """\
[mlflow]
default_permission = READ
database_uri = sqlite:///{home}/basic_auth.db
admin_username = {admin}
admin_password = {password}
# Check each password once a minute, not on every request (PBKDF2 is slow on purpose).
auth_cache_ttl_seconds = 60
"""


@pytest.fixture(scope="module")
def auth_server() -> Iterator[str]:
    """A second server, with MLflow's basic-auth app, its own database and the two users."""
    home = Path(tempfile.mkdtemp(prefix="branchflow-auth-"))
    (home / "auth.ini").write_text(AUTH_CONFIG.format(home=home, admin=ADMIN[0], password=ADMIN[1]))
    env = {
        "MLFLOW_AUTH_CONFIG_PATH": str(home / "auth.ini"),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "branchflow-tests",
    }
    server = MlflowServer.start(home, "basic-auth", env)
    try:
        server.wait_healthy()
        for user, password in USERS.items():
            rest(server.uri, "2.0/mlflow/users/create", username=user, password=password)
        yield server.uri
    finally:
        server.stop()


def rest(uri: str, endpoint: str, **body: str) -> None:
    """POST `body` to the auth app's REST API as the admin."""
    response = requests.post(f"{uri}/api/{endpoint}", json=body, auth=ADMIN, timeout=30)
    response.raise_for_status()


def as_user(monkeypatch: pytest.MonkeyPatch, uri: str, user: str) -> dict[str, str]:
    """Act as `user` on `uri`, in this process and in the environment it returns."""
    password = ADMIN[1] if user == ADMIN[0] else USERS[user]
    credentials = {
        "MLFLOW_TRACKING_URI": uri,
        "MLFLOW_TRACKING_USERNAME": user,
        "MLFLOW_TRACKING_PASSWORD": password,
    }
    for key, value in credentials.items():
        monkeypatch.setenv(key, value)
    return credentials


def branchflow(repo: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["branchflow", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=180
    )


def test_a_pr_token_registers_and_reads_but_cannot_promote(
    repo: Path, auth_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    branch = "pr/42"
    production = branch_names(repo, branch).production_model
    as_user(monkeypatch, auth_server, ADMIN[0])
    mlflow.MlflowClient(auth_server, auth_server).create_registered_model(production)
    grant = {"username": "release", "resource_type": "registered_model", "permission": "MANAGE"}
    rest(auth_server, "3.0/mlflow/users/permissions/grant", resource_id=production, **grant)

    pr_bot = as_user(monkeypatch, auth_server, "pr-bot")
    registration = register(repo, on(branch))
    assert registration.created
    candidate = f"models:/{registration.model}@{CANDIDATE}"
    refused = branchflow(repo, "promote", candidate, env=on(branch, **pr_bot))
    assert refused.returncode == 3
    assert "Traceback" not in refused.stderr  # before the error: MLflow's own progress lines
    assert refused.stderr.splitlines()[-1] == (
        f"error: MLflow at {auth_server} refused: permission denied for pr-bot; moving "
        f"{production}@{CHAMPION} needs the production environment's credentials (permission "
        f"to edit {production}); PR builds may only register and read"
    )
    pr_client = mlflow.MlflowClient(auth_server, auth_server)
    assert CHAMPION not in pr_client.get_registered_model(production).aliases
    assert pr_client.search_registered_models(f"name = '{production}{LOCK_SUFFIX}'") == []

    release = as_user(monkeypatch, auth_server, "release")
    promoted = branchflow(repo, "promote", candidate, env=on(branch, **release))
    assert promoted.returncode == 0, promoted.stderr
    assert promoted.stdout.startswith(f"{production}@{CHAMPION}: version none -> 1 ")

    pr_bot = as_user(monkeypatch, auth_server, "pr-bot")
    listed = branchflow(repo, "history", env=on(branch, **pr_bot))
    assert listed.returncode == 0, listed.stderr
    assert " promote      - -> 1  " in listed.stdout
    champion = mlflow.MlflowClient(auth_server, auth_server).get_model_version_by_alias(
        production, CHAMPION
    )
    assert champion.tags["model_sha256"] == registration.model_sha256


def test_what_production_serves_is_fixed_at_promotion(
    repo: Path, auth_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The branch's token owns the promoted version's source, its files and its run; after the
    promotion it rewrites all three, and production's champion (its files, and the metrics the
    gate compares with) does not change."""
    branch = "pr/43"
    as_user(monkeypatch, auth_server, "pr-bot")
    registration = register(repo, on(branch))
    source = mlflow.MlflowClient(auth_server, auth_server).get_model_version(
        registration.model, registration.version
    )
    release = as_user(monkeypatch, auth_server, "release")
    candidate = f"models:/{registration.model}/{registration.version}"
    promoted = branchflow(repo, "promote", candidate, env=on(branch, **release))
    assert promoted.returncode == 0, promoted.stderr
    production = branch_names(repo, branch).production_model
    client = mlflow.MlflowClient(auth_server, auth_server)
    champion = client.get_model_version_by_alias(production, CHAMPION)
    before = find_champion(repo, production, on(branch, **release))[0]
    assert champion.tags[SOURCE_TAG] == candidate and before is not None

    as_user(monkeypatch, auth_server, "pr-bot")
    bot = ("pr-bot", USERS["pr-bot"])
    payload = b"import os; os.system('touch PWNED')\n"
    source_files = artifact_files(client, source.source, tmp_path / "source")
    champion_run = client.get_run(champion.run_id)
    for name in source_files:  # its own: allowed
        assert put_artifact(auth_server, f"{artifact_path(source)}/{name}", payload, bot) == 200
    for name in source_files:  # production's copy: refused
        target = f"{champion_run.info.artifact_uri.split(':', 1)[1].lstrip('/')}/model/{name}"
        assert put_artifact(auth_server, target, payload, bot) == 403
    mlflow.MlflowClient(auth_server, auth_server).log_metric(source.run_id, "f1", 0.01)
    with pytest.raises(mlflow.exceptions.MlflowException, match="Permission denied"):
        mlflow.MlflowClient(auth_server, auth_server).log_metric(champion.run_id, "f1", 0.01)

    release = as_user(monkeypatch, auth_server, "release")
    served = Path(mlflow.artifacts.download_artifacts(f"models:/{production}@{CHAMPION}"))
    assert tree_sha256(served) == champion.tags[FILES_SHA_TAG]
    assert payload not in b"".join(p.read_bytes() for p in served.rglob("*") if p.is_file())
    assert find_champion(repo, production, on(branch, **release))[0] == before
    pinned = branchflow(repo, "pin", "--out", str(tmp_path / "pin.json"), env=on(branch, **release))
    assert pinned.returncode == 0, pinned.stderr


def artifact_path(version: ModelVersion) -> str:
    """Where the proxied artifact store keeps `version`'s files (`mlflow-artifacts:/<path>`)."""
    uri = mlflow.MlflowClient().get_model_version_download_uri(version.name, version.version)
    return uri.split(":", 1)[1].lstrip("/")


def artifact_files(client: mlflow.MlflowClient, uri: str, into: Path) -> list[str]:
    local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(into)))
    return [p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()]


def put_artifact(uri: str, path: str, data: bytes, auth: tuple[str, str]) -> int:
    url = f"{uri}/api/2.0/mlflow-artifacts/artifacts/{path}"
    return requests.put(url, data=data, auth=auth, timeout=30).status_code


@pytest.mark.parametrize("lease", [None, "4102444800"])  # no tags; a lease to the year 2100
def test_a_lock_a_pr_token_made_cannot_stop_production(
    repo: Path, auth_server: str, monkeypatch: pytest.MonkeyPatch, lease: str | None
) -> None:
    """Any account may create a registered model, so `pr-bot` makes the champion lock first:
    production's promote and rollback move past it, and it stays pr-bot's, untouched."""
    branch = f"pr/lock-{lease or 'bare'}"
    renamed(repo, f"lock-{lease or 'bare'}")
    production = branch_names(repo, branch).production_model
    as_user(monkeypatch, auth_server, "pr-bot")
    registration = register(repo, on(branch))
    lock = f"{production}{LOCK_SUFFIX}"
    tags = {LEASE_TAG: lease, OWNER_TAG: "pr-bot:1"} if lease else {}
    mlflow.MlflowClient(auth_server, auth_server).create_registered_model(lock, tags=tags)
    release = as_user(monkeypatch, auth_server, "release")
    candidate = f"models:/{registration.model}/{registration.version}"
    for command in (["promote", candidate], ["rollback"]):
        done = branchflow(repo, *command, env=on(branch, **release))
        assert done.returncode == (0 if command[0] == "promote" else 3), done.stderr
    assert "no earlier champion" in done.stderr  # the rollback ran, past the lock, to the end
    client = mlflow.MlflowClient(auth_server, auth_server)
    assert client.get_registered_model(lock).tags == tags
    assert client.get_model_version_by_alias(production, CHAMPION).version
    moved = client.get_registered_model(production).tags[LOCK_NAME_TAG]
    assert moved.startswith(f"{lock}.") and not client.search_registered_models(f"name = '{moved}'")


def test_names_a_pr_token_took_first_are_refused_in_one_line_that_says_so(
    repo: Path, auth_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`pr-bot` creates the dev branch's future model first (any account may): the dev build's
    `register` stops in one line saying the name may belong to another account."""
    branch = "squat/dev"
    names = branch_names(repo, branch)
    as_user(monkeypatch, auth_server, "pr-bot")
    mlflow.MlflowClient(auth_server, auth_server).create_registered_model(names.model)
    release = as_user(monkeypatch, auth_server, "release")
    refused = branchflow(repo, "register", env=on(branch, **release))
    assert refused.returncode == 3 and "Traceback" not in refused.stderr, refused.stderr
    assert refused.stderr.splitlines()[-1] == (
        f"error: MLflow at {auth_server} refused: permission denied for release; the experiment "
        f"{names.experiment} or the model {names.model} may exist under another account (any "
        "account may create a name first, and MLflow records no creator): an MLflow admin can "
        "see its permissions and delete it, or grant these credentials edit on it"
    )
