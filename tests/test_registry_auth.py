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

from branchflow.registry.champion import CHAMPION, LOCK_SUFFIX
from branchflow.registry.register import CANDIDATE, register
from tests.conftest import MlflowServer, branch_names, on

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
