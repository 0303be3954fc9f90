"""Branch-aware MLflow tracking: the store, the branch's experiment, and a run of DVC's state.

The store is `MLFLOW_TRACKING_URI`, else `sqlite:///<root>/mlflow.db` with artifacts under
`<root>/mlartifacts/`. What a run records (params, metrics, plots, data hash) is read through
DVC's API, never by parsing its files.

Experiments carry the tags `branch` and `project` (the base name), so `prune` on a shared
server touches only its own project. A run carries its owner (`host:pid`) and a lease: the next
`register` marks a RUNNING run whose owner is gone (a dead process of this host, or a lease
that passed) as KILLED, so a killed client or server leaves no run RUNNING for ever.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import socket
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from branchflow.errors import BranchflowError, first_line
from branchflow.workspace.context import Context
from branchflow.workspace.naming import qualified_names

if TYPE_CHECKING:
    from mlflow import MlflowClient

LOCAL_DB = "mlflow.db"
LOCAL_ARTIFACTS = "mlartifacts"
LOCK_FILE = "dvc.lock"
BRANCH_TAG = "branch"  # on experiments, runs and model versions: the raw branch name
PROJECT_TAG = "project"  # on experiments: the project's base name
COMMIT_TAG = "commit"  # on runs and model versions: the commit built
DIRTY_TAG = "dirty"  # on runs and model versions: `true` when the workspace differed from it
OWNER_TAG = "branchflow.owner"  # `host:pid` of the process that holds a run or a lock
LEASE_TAG = "branchflow.lease_until"  # seconds since the epoch; then the holder counts as gone
RUN_LEASE_S = 3600  # a run of another host counts as orphaned after this long
# Fail fast on an unreachable server (MLflow's defaults retry for minutes) and keep stdout
# for our own output; a non-empty value the user set wins.
MLFLOW_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


# What MLflow's tracking and registry stores accept (SQLAlchemy ones with an optional +driver).
TRACKING_SCHEMES = ("http", "https", "databricks", "sqlite", "postgresql", "mysql", "mssql", "file")


@dataclass(frozen=True)
class Store:
    """Where runs and models go; `artifact_root` is set only for the local default store."""

    uri: str
    artifact_root: str | None


@dataclass(frozen=True)
class Snapshot:
    """What DVC says about the workspace: the content of one tracking run."""

    params: dict[str, str]
    metrics: dict[str, float]
    plots: tuple[str, ...]
    data_hash: str | None
    lock_sha256: str | None


def store_for(root: Path, env: Mapping[str, str] = os.environ) -> Store:
    """`MLFLOW_TRACKING_URI`, else the project's local sqlite store."""
    uri = env.get("MLFLOW_TRACKING_URI")
    if uri:
        scheme = urlsplit(uri).scheme.split("+")[0].lower()
        if scheme not in TRACKING_SCHEMES:
            raise BranchflowError(
                f"MLFLOW_TRACKING_URI={uri}: unsupported scheme {scheme!r}; use one of "
                f"{', '.join(f'{s}://' for s in TRACKING_SCHEMES)}, or unset it for the local store"
            )
        return Store(uri, None)
    root = root.resolve()
    return Store(f"sqlite:///{root / LOCAL_DB}", (root / LOCAL_ARTIFACTS).as_uri())


def read_store(root: Path, env: Mapping[str, str] = os.environ) -> Store:
    """The store a read-only command reads: `store_for`'s, but a local store must exist, as
    opening it would create `mlflow.db`."""
    store = store_for(root, env)
    if store.artifact_root is not None and not (root / LOCAL_DB).is_file():
        raise BranchflowError(
            f"no MLflow registry to read: MLFLOW_TRACKING_URI is unset and {root / LOCAL_DB} "
            "does not exist; set MLFLOW_TRACKING_URI to the registry, or register a model first"
        )
    return store


def connect(store: Store) -> MlflowClient:
    """Point MLflow at `store` and check it answers, with bounded retries."""
    for key, value in MLFLOW_DEFAULTS.items():
        if not os.environ.get(key):  # CI systems often set variables to ""
            os.environ[key] = value
    import mlflow
    from mlflow.exceptions import MlflowException, RestException

    for logger in ("mlflow", "alembic"):  # the local store's first use migrates it, noisily
        logging.getLogger(logger).setLevel(logging.WARNING)
    mlflow.set_tracking_uri(store.uri)
    mlflow.set_registry_uri(store.uri)
    client = mlflow.MlflowClient(store.uri, store.uri)
    try:
        client.search_experiments(max_results=1)
    except MlflowException as exc:
        refused = refusal(store, exc)
        if refused is None and isinstance(exc, RestException):
            refused = (
                f"MLflow tracking server at {store.uri} refused the request: {_first_line(exc)}"
            )
        if refused:
            raise BranchflowError(refused) from None
        retries = os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
        raise BranchflowError(
            f"cannot reach MLflow tracking server at {store.uri} (tried {int(retries) + 1} "
            "times); start it, or set MLFLOW_TRACKING_URI to a running server"
        ) from None
    return client


@contextmanager
def mlflow_errors(
    store: Store, denied: str = "use credentials that may write there"
) -> Iterator[None]:
    """Report an MLflow failure after the reachability check as one line; `denied` says what
    to do when the server refuses the credentials."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        message = refusal(store, exc, denied) or f"MLflow at {store.uri}: {_first_line(exc)}"
        raise BranchflowError(message) from None


def refusal(store: Store, exc: Exception, denied: str = "") -> str | None:
    """One line for a 401 or 403 of the tracking server, naming the user; None for others.

    MLflow re-raises some of them wrapped (`copy_model_version`), so the causes count too."""
    causes: list[BaseException] = [exc]
    while causes[-1].__cause__ is not None:
        causes.append(causes[-1].__cause__)
    codes = {getattr(cause, "error_code", None) for cause in causes}
    code = next((c for c in ("UNAUTHENTICATED", "PERMISSION_DENIED") if c in codes), None)
    if code == "UNAUTHENTICATED":
        return (
            f"MLflow at {store.uri} refused the credentials; set MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) to a valid account"
        )
    if code != "PERMISSION_DENIED":
        return None
    user = os.environ.get("MLFLOW_TRACKING_USERNAME") or (
        "the token in MLFLOW_TRACKING_TOKEN" if os.environ.get("MLFLOW_TRACKING_TOKEN") else None
    )
    return f"MLflow at {store.uri} refused: permission denied for {user or 'anonymous'}" + (
        f"; {denied}" if denied else ""
    )


def ensure_experiment(
    client: MlflowClient, name: str, branch: str, project: str, store: Store
) -> str:
    """The id of experiment `name`, created (tagged with `branch` and `project`) or restored if
    needed; an experiment from before the project tag gets it."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = f"{store.artifact_root}/{name}" if store.artifact_root else None
        tags = {BRANCH_TAG: branch, PROJECT_TAG: project}
        try:
            return client.create_experiment(name, location, tags=tags)
        except MlflowException as exc:  # another process created it meanwhile
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment = client.get_experiment_by_name(name)
            assert experiment is not None  # the process that created it does not delete it
    if experiment.lifecycle_stage == "deleted":  # pruned earlier; the branch is back
        client.restore_experiment(experiment.experiment_id)
    if PROJECT_TAG not in experiment.tags:
        client.set_experiment_tag(experiment.experiment_id, PROJECT_TAG, project)
    return experiment.experiment_id


def branch_experiments(
    client: MlflowClient, branch: str, project: str, untagged: Iterable[str] = ()
) -> list[Any]:
    """Active experiments that `ensure_experiment` created for `branch` of `project`; one
    without a project tag (made before it existed) only when its name is in `untagged`."""
    names = set(untagged)

    def ours(tags: Mapping[str, str], name: str) -> bool:
        owner = tags.get(PROJECT_TAG)
        return tags.get(BRANCH_TAG) == branch and (
            owner == project or (not owner and name in names)
        )

    return [e for e in _active_experiments(client) if ours(e.tags, e.name)]


def _active_experiments(client: MlflowClient) -> Iterator[Any]:
    """Every active experiment on the server, page by page."""
    from mlflow.entities import ViewType

    token = None
    while True:
        page = client.search_experiments(ViewType.ACTIVE_ONLY, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def owner() -> str:
    """This process, as `host:pid`."""
    return f"{socket.gethostname()}:{os.getpid()}"


def lease_until(tags: Mapping[str, str]) -> float:
    """The lease in `tags` (see `lease_tags`), NaN where it is missing or no number."""
    try:
        return float(tags.get(LEASE_TAG, "nan"))
    except ValueError:
        return math.nan


def lease_tags(seconds: float) -> dict[str, str]:
    """Tags that name this process as the holder for the next `seconds`."""
    return {OWNER_TAG: owner(), LEASE_TAG: f"{time.time() + seconds:.6f}"}


def holder_gone(tags: Mapping[str, str]) -> bool:
    """Whether the holder in `tags` (see `lease_tags`) is gone: its lease passed, or it was a
    process of this host that no longer runs. A lease that is no finite number (a tag someone
    else wrote) never held anything."""
    if not time.time() <= lease_until(tags) < math.inf:
        return True
    host, _, pid = tags.get(OWNER_TAG, "").rpartition(":")
    if host != socket.gethostname() or not pid.isdecimal():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, run by another user
        pass
    return False


def end_orphans(client: MlflowClient, experiment_id: str) -> None:
    """Mark KILLED the RUNNING runs of `experiment_id` whose branchflow holder is gone (a
    killed client, or a server that died mid-call)."""
    running = client.search_runs([experiment_id], "attributes.status = 'RUNNING'")
    orphans = [
        r.info.run_id for r in running if OWNER_TAG in r.data.tags and holder_gone(r.data.tags)
    ]
    for run_id in orphans:
        client.set_terminated(run_id, "KILLED")


def read_snapshot(
    root: Path,
    data_hash: str | None,
    required: Iterable[str] = (),
    metrics_files: Sequence[str] | None = None,
) -> Snapshot:
    """Params, metrics (of `metrics_files`, else every one) and plot files of the workspace at
    `root`, with its `data_hash` (the data version of the pipeline the snapshot is of: see
    `branchflow.workspace.pipelines.scope`).

    Every path in `required` and every DVC metrics file must exist; a missing one names the
    stage that writes it.
    """
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        for path in required:
            if not (root / path).exists():
                raise BranchflowError(missing_output(repo, path))
        targets = None if metrics_files is None else [str(root / f) for f in metrics_files]
        metrics = _merge(repo, repo.metrics.show(targets))
        params = _merge(repo, repo.params.show())
        sources = repo.plots.show().get("workspace", {}).get("sources", {}).get("data", {})
    lock = root / LOCK_FILE
    return Snapshot(
        params={key: str(value) for key, value in params.items()},
        metrics={
            key: float(value)
            for key, value in metrics.items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        },
        plots=tuple(sorted(path for path, entry in sources.items() if "error" not in entry)),
        data_hash=data_hash,
        lock_sha256=file_sha256(lock) if lock.is_file() else None,
    )


def _merge(repo: Any, shown: Mapping[str, Any]) -> dict[str, Any]:
    """DVC's per-file params or metrics of the workspace, flattened into one mapping by
    `naming.qualified_names` (`file:key` only for a key that several files have)."""
    from dvc.utils.flatten import flatten

    values: dict[tuple[str, str], Any] = {}
    for file, entry in shown.get("", {}).get("data", {}).items():
        error = entry.get("error")
        if isinstance(error, FileNotFoundError):
            raise BranchflowError(missing_output(repo, file))
        if error is not None:
            raise BranchflowError(f"{file}: DVC cannot read it ({error}); fix the file")
        values |= {(file, k): v for k, v in flatten(entry.get("data", {})).items()}
    names = qualified_names(values)
    return {names[key]: value for key, value in values.items()}


def missing_output(repo: Any, path: str) -> str:
    """Say that `path` is missing and which `dvc repro` (or `dvc pull`) would write it."""
    from dvc.exceptions import OutputNotFoundError

    try:
        outs = repo.find_outs_by_path(os.path.join(repo.root_dir, path))
    except OutputNotFoundError:
        return f"{path} not found; create it, or declare the stage that writes it in dvc.yaml"
    stage = outs[0].stage
    dvcfile = os.path.relpath(stage.path, repo.root_dir)
    if stage.is_data_source:
        return f"{path} not found; run `dvc pull {dvcfile}`"
    target = stage.name if dvcfile == "dvc.yaml" else f"{dvcfile}:{stage.name}"
    return f"{path} not found; run `dvc repro {target}`"


def run_tags(context: Context, snapshot: Snapshot) -> dict[str, str]:
    """Tags that tie a run to its branch, commit, CI run, data and pipeline state."""
    tags = {
        BRANCH_TAG: context.branch,
        COMMIT_TAG: context.commit,
        DIRTY_TAG: str(context.dirty).lower(),
        "pr": None if context.pr_number is None else str(context.pr_number),
        "ci_run_url": context.run_url,
        "data_hash": snapshot.data_hash,
        "dvc_lock_sha256": snapshot.lock_sha256,
    }
    return {key: value for key, value in tags.items() if value is not None}


def log_snapshot(root: Path, snapshot: Snapshot, model_id: str | None = None) -> None:
    """Log params, metrics (linked to the logged model `model_id`), plot files and `dvc.lock`
    to the active run."""
    import mlflow

    mlflow.log_params(snapshot.params)
    mlflow.log_metrics(snapshot.metrics, model_id=model_id)
    for path in snapshot.plots:
        log_file(root, path)
    if snapshot.lock_sha256:
        mlflow.log_artifact(str(root / LOCK_FILE))


def log_file(root: Path, path: str) -> None:
    """Log the project file `path` to the active run at the same relative path."""
    import mlflow

    folder = Path(path).parent.as_posix()
    mlflow.log_artifact(str(root / path), None if folder == "." else folder)


def file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _first_line(exc: Exception) -> str:
    """An MLflow error's message (its `message`, not its JSON-ish str) as one line."""
    return first_line(exc, getattr(exc, "message", None))
