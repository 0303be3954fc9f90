"""Shared fixtures: real git + DVC repositories built from this checkout's working tree."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import textwrap
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import mlflow

    from branchflow.workspace.naming import Names

ROOT = Path(__file__).resolve().parents[1]

# Branch names every naming rule must survive: none may break, collide, or be executed.
EVIL = "x; rm -rf / $(touch pwned) `id`"
BRANCHES = [
    "main",
    "feature/Foo-Bar",
    "dependabot/pip/torch-2.13.0",
    "user/ünïcode",
    "b" * 300,
    "Feature",
    "feature",
    "a/b",
    "a-b",
    EVIL,
]

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
# Idle OpenMP threads sleep instead of spinning: same model bytes, several times faster training
# when the suite's other processes (servers, stages) share the two cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def sh(*args: str | Path, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command (no shell) in `cwd`, capturing text output."""
    return subprocess.run(
        [str(a) for a in args], cwd=cwd, check=check, capture_output=True, text=True
    )


def branchflow(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`branchflow ARGS` in `cwd`, run in this process through click's CliRunner: the exit status
    and output a process would give, without its seconds of imports. Each command's real
    process is run by at least one e2e test (the README's lines, the generated workflows)."""
    from click.testing import CliRunner

    from branchflow.cli import main

    previous = Path.cwd()
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    finally:
        os.chdir(previous)
    done = subprocess.CompletedProcess(["branchflow", *args], result.exit_code)
    done.stdout, done.stderr = result.stdout, result.stderr
    if check:
        done.check_returncode()
    return done


def project_files() -> list[str]:
    """The files git would ship from this checkout: tracked plus untracked-not-ignored."""
    listed = sh("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=ROOT)
    return [f for f in listed.stdout.split("\0") if f and (ROOT / f).is_file()]


def init_repo(path: Path) -> Path:
    """Commit everything under `path` as `main` of a new git repository."""
    sh("git", "init", "-q", "-b", "main", cwd=path)
    sh("git", "config", "user.email", "tests@branchflow.invalid", cwd=path)
    sh("git", "config", "user.name", "branchflow tests", cwd=path)
    sh("git", "add", "-A", cwd=path)
    sh("git", "commit", "-q", "-m", "project as in the working tree", cwd=path)
    return path


def dvc_project(repo: Path, files: dict[str, str]) -> Path:
    """`files` (dedented) in a new git + DVC repository at `repo`, analytics off, nothing
    committed yet."""
    for path, text in files.items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(textwrap.dedent(text).lstrip())
    sh("git", "init", "-q", cwd=repo)
    sh("dvc", "init", "-q", cwd=repo)
    sh("dvc", "config", "core.analytics", "false", cwd=repo)
    return repo


def built_once(factory: pytest.TempPathFactory, name: str, build: Callable[[Path], object]) -> Path:
    """The folder `name`, filled by `build(folder)` once per test run: under pytest-xdist the
    first worker that asks builds it while the others wait on a file lock, and all share it.
    Treat what is inside as read-only: copy it (`copy_repo`) before changing it."""
    from filelock import FileLock

    base = factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the run's folder, above each worker's own
    folder = base / "built-once" / name
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{folder}.lock"):
        if not (folder / ".built").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            (folder / ".built").touch()
    return folder


def built_repo(factory: pytest.TempPathFactory, name: str, make: Callable[[Path], object]) -> Path:
    """`<name>/repo`, made once per test run by `make(path)` (see `built_once`)."""
    return built_once(factory, name, lambda folder: make(folder / "repo")) / "repo"


@pytest.fixture(scope="session")
def project_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git repository holding this checkout's files, as a fresh clone would have them."""

    def make(dest: Path) -> None:
        for name in project_files():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target)
        init_repo(dest)

    return built_repo(tmp_path_factory, "project", make)


@pytest.fixture(scope="session")
def reproduced_repo(project_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clone of `project_repo` after `dvc pull data.dvc` and `dvc repro`. Do not modify it:
    copy it with `copy_repo` first."""

    def make(dest: Path) -> None:
        sh("git", "clone", "-q", project_repo, dest, cwd=project_repo.parent)
        sh("dvc", "pull", "-q", "data.dvc", cwd=dest)
        sh("dvc", "repro", "-q", cwd=dest)

    return built_repo(tmp_path_factory, "reproduced", make)


@pytest.fixture(scope="session")
def metrics_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reproduced metrics project of `tests/metrics_project.py`; copy it to change it."""
    from tests.metrics_project import make_metrics_repo  # it imports this module

    return built_repo(tmp_path_factory, "metrics", make_metrics_repo)


@pytest.fixture(scope="session")
def sklearn_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reproduced scikit-learn project of `tests/sklearn_project.py`; copy it to change it."""
    from tests.sklearn_project import make_sklearn_repo  # it imports this module

    return built_repo(tmp_path_factory, "sklearn", make_sklearn_repo)


@pytest.fixture(scope="session")
def shapes_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shapes project of `tests/shapes_project.py` on `main`, before `init`; copy it."""
    from tests.shapes_project import make_shapes_repo  # it imports this module

    return built_repo(tmp_path_factory, "shapes", make_shapes_repo)


def _git_locks(folder: str, names: list[str]) -> set[str]:
    """git's lock files (`index.lock`, ref locks) in `.git`: never copied (dvc.lock is)."""
    return (
        {name for name in names if name.endswith(".lock")}
        if ".git" in Path(folder).parts
        else set()
    )


@pytest.fixture
def copy_repo(tmp_path: Path):
    """Copy a repository (work tree, .git and DVC cache) somewhere this test may change it.

    Another worker's `git status` on the shared repository may hold `.git/index.lock` for a
    moment (it refreshes the index); that file is never copied, so the copy cannot race it."""

    def copy(source: Path) -> Path:
        target = tmp_path / source.name
        shutil.copytree(source, target, symlinks=True, ignore=_git_locks)
        return target

    return copy


# What GitHub Actions, Azure Pipelines and GitLab CI set, and branchflow's own overrides.
CI_VARIABLE_PREFIXES = ("BRANCHFLOW_", "GITHUB_", "BUILD_", "SYSTEM_", "CI_", "GITLAB_")


def hide_ci_variables(monkeypatch: pytest.MonkeyPatch, *prefixes: str) -> None:
    """Hide the CI variables (and any of `prefixes`) of whoever runs the tests."""
    for key in list(os.environ):
        if key.startswith((*CI_VARIABLE_PREFIXES, *prefixes)) or key in {"CI", "TF_BUILD"}:
            monkeypatch.delenv(key)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class MlflowServer:
    """A real `mlflow server` (sqlite, local artifacts) started in the background."""

    home: Path
    process: subprocess.Popen[bytes]
    uri: str

    @classmethod
    def start(
        cls, home: Path, app_name: str | None = None, env: Mapping[str, str] | None = None
    ) -> MlflowServer:
        """Start a server on `home`'s database and artifacts (a new one, or one `kill`ed);
        `app_name` and `env` as for `mlflow server --app-name`."""
        port = free_port()
        command = ["mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
        command += ["--workers", "1", "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}"]
        command += ["--artifacts-destination", str(home / "artifacts")]
        command += ["--app-name", app_name] if app_name else []
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})}
        with (home / "server.log").open("ab") as log:
            process = subprocess.Popen(
                command, cwd=home, env=env, stdout=log, stderr=log, start_new_session=True
            )
        return cls(home, process, f"http://127.0.0.1:{port}")

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + 90
        while not answers(f"{self.uri}/health"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"mlflow server did not start:\n{(self.home / 'server.log').read_text()}"
                )
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL the server, as a crash would; its database and artifacts stay."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):  # the group may be gone already
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        shutil.rmtree(self.home, ignore_errors=True)


SERVER = pytest.StashKey[MlflowServer]()


# What puts a test in the e2e tier, whatever its file: a real MLflow HTTP server, or the
# example reproduced. `-m "not e2e"` (the fast tier) then never waits for either.
E2E_FIXTURES = frozenset({"mlflow_server", "reproduced_repo"})


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if E2E_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> None:
    """Before the first test runs (never on `--collect-only`), start the server if a selected
    test needs it: it boots (about 10 s of imports and migrations) while the tests before them
    run. Each xdist worker has its own."""
    if any("mlflow_server" in getattr(item, "fixturenames", ()) for item in session.items):
        home = Path(tempfile.mkdtemp(prefix="branchflow-mlflow-"))
        session.config.stash[SERVER] = MlflowServer.start(home)


def pytest_sessionfinish(session: pytest.Session) -> None:
    server = session.config.stash.get(SERVER, None)
    if server is not None:
        server.stop()


@pytest.fixture(scope="session")
def mlflow_server(request: pytest.FixtureRequest) -> str:
    """The URI of the session's real `mlflow server`, one per test session."""
    if SERVER not in request.config.stash:  # selected after collection, by a plugin
        home = Path(tempfile.mkdtemp(prefix="branchflow-mlflow-"))
        request.config.stash[SERVER] = MlflowServer.start(home)
    server = request.config.stash[SERVER]
    server.wait_healthy()
    return server.uri


def answers(url: str) -> bool:
    """Whether a GET of `url` (a server's health check) answers 200 now."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="session")
def pyfunc_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny reproduced project of `tests/pyfunc_project.py` (a few-line pyfunc model). Do
    not modify it: copy it with `copy_repo` first."""
    from tests.pyfunc_project import make_pyfunc_repo  # it imports this module

    return built_repo(tmp_path_factory, "pyfunc", make_pyfunc_repo)


# The registry tests' environment: the tiny project on the session's server, without CI variables.


@pytest.fixture
def registry_env(monkeypatch: pytest.MonkeyPatch, mlflow_server: str) -> None:
    """Hide the CI variables of whoever runs the tests; point MLflow at the session's server."""
    hide_ci_variables(monkeypatch)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)


@pytest.fixture
def repo(pyfunc_repo: Path, copy_repo: Callable[[Path], Path]) -> Path:
    """A reproduced tiny project (model `x > 0.5`, metrics) this test may change."""
    return copy_repo(pyfunc_repo)


@pytest.fixture
def client(mlflow_server: str) -> mlflow.MlflowClient:
    """A client of the session's server."""
    import mlflow

    return mlflow.MlflowClient(mlflow_server, mlflow_server)


def on(branch: str, **extra: str) -> dict[str, str]:
    """This process's environment, building `branch`."""
    return {**os.environ, "BRANCHFLOW_BRANCH": branch, **extra}


def branch_names(repo: Path, branch: str) -> Names:
    """The names branchflow derives for `branch` of the project at `repo`."""
    from branchflow.settings import load_settings
    from branchflow.workspace.context import resolve_context
    from branchflow.workspace.naming import names_for

    return names_for(resolve_context(repo, on(branch)), load_settings(repo))
