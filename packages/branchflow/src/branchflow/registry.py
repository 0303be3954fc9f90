"""The model registry: branch candidates, the production champion, promote and rollback.

Aliases only (registry stages are deprecated in MLflow). A branch's model (`Names.model`)
carries `candidate` on the version of its latest registration; the production model carries
`champion` on a copy of the promoted version. Every champion move is stored in MLflow as a JSON
tag `branchflow.move.<UTC time>.<id>` of the production model, which `history` reads back.

Concurrency and crashes (MLflow offers no compare-and-set, so):

- Registering: the version with the lowest number among those tagged with the package's
  sha256 (`package_sha256`: everything the logged model holds) wins. A `register` that finds
  its new version beaten by a lower one deletes its version and its run and reports the
  winner, so N concurrent registers of the same package leave one.
- Moving `champion`: under a lock, the registered model `<production>.lock`, which only one
  process can create (the server answers RESOURCE_ALREADY_EXISTS to the others, who wait up to
  `LOCK_WAIT_S`). It carries its holder (`host:pid`), a lease and a token; a lock whose holder
  is gone (lease passed, or a dead process of this host) is deleted by the one taker that
  creates the guard `<lock>.<token>` (itself such a lock), so that no taker deletes a newer
  lock; a holder checks it still holds the lock right before it writes. Under the lock
  the champion and the last record must still be what the command saw when it started
  (compare-and-set), and the alias must match the last record (else it was moved outside
  branchflow); otherwise the command fails and moves nothing.
- Journal: a move is recorded as pending, then the alias moved, then the record confirmed. A
  pending record whose alias does not show its `to_version` never happened (its process died
  first): `history` and `rollback` ignore it and the next move deletes it; one whose alias
  does happened, and the next move confirms it. An alias that differs from the last confirmed
  record was moved outside branchflow.
"""

from __future__ import annotations

import dataclasses
import getpass
import hashlib
import importlib
import json
import os
import re
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from branchflow.config import MODEL_SECTION, SAVED_MODEL, ModelSettings, Settings, load_settings
from branchflow.context import Context, names_for, resolve_context, slugify
from branchflow.dag import read_dag
from branchflow.errors import BranchflowError
from branchflow.lock import environment_requirements, has_lock
from branchflow.pipelines import scope
from branchflow.tracking import (
    LEASE_TAG,
    OWNER_TAG,
    RUN_LEASE_S,
    Store,
    branch_experiments,
    connect,
    end_orphans,
    ensure_experiment,
    file_sha256,
    holder_gone,
    lease_tags,
    log_snapshot,
    mlflow_errors,
    read_snapshot,
    run_tags,
    store_for,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion, RegisteredModel

CANDIDATE = "candidate"
CHAMPION = "champion"
MODEL_SHA_TAG = "model_sha256"  # the artifacts' bytes, for people
PACKAGE_SHA_TAG = "package_sha256"  # the registration key: see `package_sha256`
FLAVOR_PACKAGES = {"sklearn": ("sklearn", "scikit-learn"), "pytorch": ("torch", "torch")}
MOVE_TAG_PREFIX = "branchflow.move."
KEY_TIME = "%Y%m%dT%H%M%S.%fZ"  # a move record's key: `<MOVE_TAG_PREFIX><UTC time>.<id>`
PENDING = "pending"  # in a move record until its alias has moved
MODEL_ARTIFACT = "model"
LOCK_SUFFIX = ".lock"  # `<production>.lock`: the registered model that locks champion moves
LOCK_LEASE_S = 60  # a move takes seconds; a holder silent for longer counts as gone
LOCK_WAIT_S = 15
LOCK_POLL_S = 0.2
TOKEN_TAG = "branchflow.token"  # on a lock: which taking of it this is
MODELS_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>[0-9]+))")


@dataclass(frozen=True)
class Registration:
    """The branch model version that holds the workspace's model package."""

    model: str
    version: str
    created: bool  # False: an earlier version already held this package
    run_id: str | None
    model_sha256: str
    package_sha256: str


@dataclass(frozen=True)
class Move:
    """One move of the champion alias; `from_version == to_version` means nothing moved."""

    action: str  # "promote" or "rollback"
    model: str
    alias: str
    from_version: str | None
    to_version: str
    source: str | None  # the promoted `models:/<name>/<version>`
    who: str
    when: str  # ISO 8601, UTC
    commit: str
    reason: str


@dataclass(frozen=True)
class _State:
    """The champion alias, the recorded moves that happened (tag key, move), oldest first, and
    the last record if it is still pending (it happened if the alias shows its `to_version`)."""

    alias: str | None
    moves: tuple[tuple[str, Move], ...]
    pending: tuple[str, Move] | None

    @property
    def stamp(self) -> tuple[str | None, str | None]:
        """What a compare-and-set compares: the alias and the last record."""
        return self.alias, self.moves[-1][0] if self.moves else None


@dataclass(frozen=True)
class PrunePlan:
    """What `prune` removed (or, for a dry run, would remove) for one branch."""

    branch: str
    model: str
    versions: tuple[str, ...]
    kept_versions: tuple[str, ...]
    experiments: tuple[str, ...]
    kept_experiments: tuple[str, ...]
    dry_run: bool


def register(root: Path, env: Mapping[str, str] = os.environ) -> Registration:
    """Log a run of the workspace's DVC state and register its model as the branch candidate.

    Every precondition (settings, files, metrics, a reachable server) is checked before
    anything is written; the same model package on the same branch registers nothing new.
    """
    import mlflow

    settings = load_settings(root)
    model = _model_settings(settings)
    context = resolve_context(root, env, settings)
    names = names_for(context, settings)
    judged = scope(root, settings, read_dag(root), None)
    files = [*model.artifacts.values(), *model.source_files]
    snapshot = read_snapshot(root, judged.data_hash, files, judged.metrics_files)
    unknown = [key for key in model.key_metrics if key not in snapshot.metrics]
    if unknown:
        raise BranchflowError(
            f"{MODEL_SECTION} key_metrics {', '.join(unknown)}: not among the DVC metrics "
            f"({', '.join(sorted(snapshot.metrics)) or 'none'}); fix the names"
        )
    package = _package(root, model)
    sha = artifacts_sha256(root, model.artifacts)
    key = package_sha256(root, model, package["pip_requirements"])
    store = store_for(root, env)
    client = connect(store)
    with mlflow_errors(store):
        experiment = ensure_experiment(
            client, names.experiment, context.branch, settings.base_name, store
        )
        end_orphans(client, experiment)
        held = _first_holder(client, names.model, key)
        if held:
            client.set_registered_model_alias(names.model, CANDIDATE, held.version)
            return Registration(names.model, held.version, False, held.run_id, sha, key)
        tags = run_tags(context, snapshot)
        with mlflow.start_run(
            experiment_id=experiment,
            run_name=names.run_name,
            tags={**tags, **lease_tags(RUN_LEASE_S)},
        ) as run:
            flavor = importlib.import_module(f"mlflow.{model.flavor}")
            info = flavor.log_model(name=MODEL_ARTIFACT, **package)
            log_snapshot(root, snapshot, info.model_id)  # after the model: metrics link to it
        key_metrics = {f"metric.{key}": str(snapshot.metrics[key]) for key in model.key_metrics}
        tags = {**tags, MODEL_SHA_TAG: sha, PACKAGE_SHA_TAG: key, **key_metrics}
        version = mlflow.register_model(info.model_uri, names.model, tags=tags)
        winner = _first_holder(client, names.model, key) or version
        if winner.version != version.version:  # a concurrent register of this package came first
            client.delete_model_version(names.model, version.version)
            client.delete_run(run.info.run_id)
        client.set_registered_model_alias(names.model, CANDIDATE, winner.version)
    created = winner.version == version.version
    return Registration(names.model, winner.version, created, winner.run_id, sha, key)


def promote(
    root: Path, model_uri: str, reason: str = "", env: Mapping[str, str] = os.environ
) -> Move:
    """Copy the version `model_uri` names into the production model (once) and make it champion.

    `model_uri` is `models:/<name>@<alias>` or `models:/<name>/<version>`. A version of the
    production model itself is made champion without a copy.
    """
    match = MODELS_URI.fullmatch(model_uri)
    if match is None:
        raise BranchflowError(
            f"{model_uri!r} is not a model version URI; use models:/<name>@<alias> "
            "or models:/<name>/<version>"
        )
    settings, context, store, client = _open(root, env)
    production = names_for(context, settings).production_model
    with mlflow_errors(store, _denied(production)):
        source = _version(client, match["name"], match["alias"], match["version"], model_uri)
        source_uri = f"models:/{source.name}/{source.version}"
        with _moving(client, production) as (state, write):
            champion = _champion_version(client, production, state)
            if champion is not None and source_uri in (champion.source, _uri(champion)):
                return _move(
                    "promote", production, champion, champion.version, source_uri, context, env
                )
            target = source if source.name == production else _copy(client, source_uri, production)
            move = _move(
                "promote", production, champion, target.version, source_uri, context, env, reason
            )
            write(move)
    return move


def _copy(client: MlflowClient, source_uri: str, production: str) -> ModelVersion:
    """The version of `production` copied from `source_uri`: the one an earlier promote (or one
    that crashed before moving the alias) made, else a new copy."""
    for version in client.search_model_versions(f"name = '{production}'"):
        if version.source == source_uri:
            return version
    return client.copy_model_version(source_uri, production)


def rollback(root: Path, reason: str = "", env: Mapping[str, str] = os.environ) -> Move:
    """Move `champion` back to the version that held it before the latest promotion."""
    settings, context, store, client = _open(root, env)
    production = names_for(context, settings).production_model
    with mlflow_errors(store, _denied(production)), _moving(client, production) as (state, write):
        target = _rollback_target([move for _, move in state.moves])
        if target is None:
            raise BranchflowError(
                f"{production} has no earlier champion to roll back to; see `branchflow history`"
            )
        champion = _champion_version(client, production, state)
        client.get_model_version(production, target)  # fails clearly if it was deleted
        move = _move("rollback", production, champion, target, None, context, env, reason)
        write(move)
    return move


def history(root: Path, env: Mapping[str, str] = os.environ) -> list[Move]:
    """Every champion move of the production model that happened, oldest first."""
    settings, context, store, client = _open(root, env)
    with mlflow_errors(store):
        state = _state(client, names_for(context, settings).production_model)
    return [move for _, move in state.moves]


def prune(
    root: Path, branch: str, dry_run: bool = False, env: Mapping[str, str] = os.environ
) -> PrunePlan:
    """Delete `branch`'s model versions and soft-delete its experiments.

    Kept: versions an alias other than `candidate` points to, versions copied into the
    production model (a rollback may need them), and the experiments of their runs.
    """
    settings, context, store, client = _open(root, env)
    gone = dataclasses.replace(context, branch=branch, branch_slug=slugify(branch))
    names = names_for(gone, settings)
    with mlflow_errors(store):
        registered = _registered_model(client, names.model)
        versions = client.search_model_versions(f"name = '{names.model}'") if registered else []
        aliases = registered.aliases if registered else {}
        production = client.search_model_versions(f"name = '{names.production_model}'")
        copied = {version.source for version in production}
        keep = {
            v.version
            for v in versions
            if _uri(v) in copied
            or any(a != CANDIDATE and n == v.version for a, n in aliases.items())
        }
        runs = {v.run_id for v in versions if v.version in keep and v.run_id}
        busy = {client.get_run(run).info.experiment_id for run in runs}
        experiments = branch_experiments(client, branch, settings.base_name, [names.experiment])
        doomed = [e for e in experiments if e.experiment_id not in busy]
        plan = PrunePlan(
            branch=branch,
            model=names.model,
            versions=_sorted(v.version for v in versions if v.version not in keep),
            kept_versions=_sorted(keep),
            experiments=tuple(e.name for e in doomed),
            kept_experiments=tuple(e.name for e in experiments if e.experiment_id in busy),
            dry_run=dry_run,
        )
        if dry_run:
            return plan
        if registered and not keep:
            client.delete_registered_model(names.model)
        for version in plan.versions if keep else ():
            client.delete_model_version(names.model, version)
        for experiment in doomed:
            client.delete_experiment(experiment.experiment_id)
    return plan


def artifacts_sha256(root: Path, artifacts: Mapping[str, str]) -> str:
    """sha256 of the model's files: of the file itself when there is one, else of a manifest."""
    digests = _digests(root, artifacts)
    if len(digests) == 1:
        return digests[0][2]
    return hashlib.sha256(json.dumps(digests).encode()).hexdigest()


def package_sha256(root: Path, model: ModelSettings, requirements: list[str] | None) -> str:
    """The registration key: sha256 of everything the logged package holds, that is the flavor,
    the bytes of the artifacts, python_model, code_paths and input example, the signature and
    the pip requirements (None: MLflow infers them, and they are not in the key)."""
    named = {f"artifacts.{key}": path for key, path in model.artifacts.items()}
    named |= {f"code_paths.{index}": path for index, path in enumerate(model.code_paths)}
    named |= {"python_model": model.python_model, "input_example": model.input_example}
    contents = {
        "flavor": model.flavor,
        "files": _digests(root, {key: path for key, path in named.items() if path}),
        "signature": model.signature,
        "pip_requirements": requirements,
    }
    return hashlib.sha256(json.dumps(contents, sort_keys=True).encode()).hexdigest()


def _digests(root: Path, named: Mapping[str, str]) -> list[list[str]]:
    """`[name, path, sha256]` of each file of `named` (a folder: every file under it, without
    `__pycache__`, whose bytes change with every checkout), sorted."""
    files = sorted(
        (key, file)
        for key, path in named.items()
        for file in ([root / path] if (root / path).is_file() else (root / path).rglob("*"))
        if file.is_file() and "__pycache__" not in file.relative_to(root).parts
    )
    return [[key, file.relative_to(root).as_posix(), file_sha256(file)] for key, file in files]


def _model_settings(settings: Settings) -> ModelSettings:
    if settings.model is None or not settings.model.artifacts:
        raise BranchflowError(
            f"pyproject.toml: {MODEL_SECTION} with artifacts (and python_model, or a flavor) is "
            "needed to register a model; add it (see docs/registry.md)"
        )
    return settings.model


def _package(root: Path, model: ModelSettings) -> dict[str, Any]:
    """Arguments for the flavor's `log_model`, checked up front."""
    common = {
        "code_paths": [str(root / path) for path in model.code_paths] or None,
        "input_example": _input_example(root, model.input_example),
        "signature": _signature(model.signature),
        "pip_requirements": _requirements(root, model),
    }
    if model.flavor == "sklearn":
        # cloudpickle: the estimator is a pickle already; MLflow's default, skops, is a package
        # the toolkit does not bring
        return {
            **common,
            "sk_model": _saved_model(root, model),
            "serialization_format": "cloudpickle",
        }
    if model.flavor == "pytorch":
        # pickle: what torch.save wrote, for TorchScript too (pt2 needs torch.export to succeed)
        return {
            **common,
            "pytorch_model": _saved_model(root, model),
            "serialization_format": "pickle",
        }
    return {
        **common,
        "python_model": str(root / (model.python_model or "")),
        "artifacts": {key: str(root / path) for key, path in model.artifacts.items()},
    }


def _saved_model(root: Path, model: ModelSettings) -> Any:
    """The sklearn or pytorch flavor's model, loaded from its one artifact. Loading a pickle
    runs its code: only the file the project's own settings name is loaded."""
    module, package = FLAVOR_PACKAGES[model.flavor]
    try:
        importlib.import_module(module)
    except ImportError:
        raise BranchflowError(
            f"{MODEL_SECTION} flavor {model.flavor} needs the {package} package; add it to the "
            "project's dependencies"
        ) from None
    (path,) = model.artifacts.values()
    try:
        return _load_estimator(root / path) if module == "sklearn" else _load_torch(root / path)
    except Exception as exc:  # unpickling raises whatever the pickled code raises
        raise BranchflowError(
            f"{MODEL_SECTION} artifacts {path}: not {SAVED_MODEL[model.flavor]} ({exc})"
        ) from None


def _load_estimator(file: Path) -> Any:
    """A pickled or joblib-dumped estimator (joblib reads both)."""
    import joblib

    return joblib.load(file)


def _load_torch(file: Path) -> Any:
    """A TorchScript file (its archive holds `constants.pkl`), else a whole `torch.save`d model."""
    import torch

    with zipfile.ZipFile(file) as archive:
        scripted = any(name.endswith("/constants.pkl") for name in archive.namelist())
    if scripted:
        return torch.jit.load(file, map_location="cpu")
    return torch.load(file, map_location="cpu", weights_only=False)


def _requirements(root: Path, model: ModelSettings) -> list[str] | None:
    """The configured list, else the lock's pins; None (MLflow infers them) without either."""
    if model.pip_requirements is None and not has_lock(root):
        return None
    return [*environment_requirements(root, model.pip_requirements, model.lock_groups)]


def _input_example(root: Path, path: str | None) -> Any:
    if path is None:
        return None
    file = root / path
    try:
        if file.suffix == ".npy":
            import numpy as np

            return np.load(file)
        if file.suffix == ".json":
            return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BranchflowError(f"{MODEL_SECTION} input_example {path}: unreadable ({exc})") from None
    raise BranchflowError(f"{MODEL_SECTION} input_example {path}: use a .npy or .json file")


def _signature(spec: Mapping[str, Any] | None) -> Any:
    if spec is None:
        return None
    from mlflow.exceptions import MlflowException
    from mlflow.models import ModelSignature

    try:
        return ModelSignature.from_dict({key: json.dumps(value) for key, value in spec.items()})
    except (MlflowException, KeyError, TypeError, ValueError) as exc:
        raise BranchflowError(
            f"{MODEL_SECTION} signature: {exc}; write it as an MLmodel file's signature"
        ) from None


def _open(root: Path, env: Mapping[str, str]) -> tuple[Settings, Context, Store, MlflowClient]:
    settings = load_settings(root)
    context = resolve_context(root, env, settings)
    store = store_for(root, env)
    return settings, context, store, connect(store)


def _registered_model(client: MlflowClient, name: str) -> RegisteredModel | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def _first_holder(client: MlflowClient, model: str, key: str) -> ModelVersion | None:
    """The lowest-numbered version of `model` that holds the package `key` (`package_sha256`)."""
    held = client.search_model_versions(f"name = '{model}' and tags.{PACKAGE_SHA_TAG} = '{key}'")
    return min(held, key=lambda version: int(version.version), default=None)


def _version(
    client: MlflowClient, name: str, alias: str | None, version: str | None, uri: str
) -> ModelVersion:
    """The version a `models:/` URI names, or an error that says it does not exist."""
    registered = _registered_model(client, name)
    number = registered.aliases.get(alias) if registered and alias else version
    if registered is None or number is None:
        raise BranchflowError(f"{uri} does not exist in the registry; check the name and alias")
    return client.get_model_version(name, number)


def current_champion(client: MlflowClient, production: str) -> ModelVersion | None:
    registered = _registered_model(client, production)
    version = registered.aliases.get(CHAMPION) if registered else None
    return client.get_model_version(production, version) if version else None


def _champion_version(client: MlflowClient, production: str, state: _State) -> ModelVersion | None:
    return client.get_model_version(production, state.alias) if state.alias else None


def _uri(version: ModelVersion) -> str:
    return f"models:/{version.name}/{version.version}"


def _move(
    action: str,
    production: str,
    champion: ModelVersion | None,
    to_version: str,
    source: str | None,
    context: Context,
    env: Mapping[str, str],
    reason: str = "",
) -> Move:
    try:
        who = env.get("GITHUB_ACTOR") or getpass.getuser()
    except (KeyError, OSError):  # no login name in this container
        who = "unknown"
    return Move(
        action=action,
        model=production,
        alias=CHAMPION,
        from_version=champion.version if champion else None,
        to_version=to_version,
        source=source,
        who=who,
        when=datetime.now(UTC).isoformat(timespec="microseconds"),
        commit=context.commit,
        reason=reason,
    )


def _denied(production: str) -> str:
    return (
        f"moving {production}@{CHAMPION} needs the production environment's credentials "
        f"(permission to edit {production}); PR builds may only register and read"
    )


@contextmanager
def _moving(
    client: MlflowClient, production: str
) -> Iterator[tuple[_State, Callable[[Move], None]]]:
    """Lock `production` for one champion move; yield its state, checked unchanged since this
    command began, and the function that records and makes a move."""
    seen = _state(client, production)
    with _lock(client, production) as confirm:
        state = _checked(client, production, seen)

        def write(move: Move) -> None:
            confirm()
            key = _key(move, state.stamp[1])
            _record(client, key, move, pending=True)
            client.set_registered_model_alias(production, CHAMPION, move.to_version)
            _record(client, key, move)

        yield state, write


def _checked(client: MlflowClient, production: str, seen: _State) -> _State:
    """The state under the lock, its pending record confirmed or deleted; an error when the
    champion was moved outside branchflow or since `seen`."""
    state = _state(client, production)
    if state.pending and state.alias == state.pending[1].to_version:
        _record(client, *state.pending)
    elif state.pending:
        client.delete_registered_model_tag(production, state.pending[0])
    last = state.moves[-1][1] if state.moves else None
    if last is not None and state.alias != last.to_version:
        raise BranchflowError(
            f"{production}@{CHAMPION} is {state.alias or 'unset'} but branchflow's last move "
            f"set version {last.to_version}: it was moved outside branchflow; set it back to "
            f"{last.to_version} (MLflow UI or set_registered_model_alias), then run again"
        )
    if state.stamp != seen.stamp:
        raise BranchflowError(
            f"{production}@{CHAMPION} moved (now version {state.alias}) while this command "
            "started: another promote or rollback came first; see `branchflow history`, then "
            "run again"
        )
    return state


def _state(client: MlflowClient, production: str) -> _State:
    registered = _registered_model(client, production)
    tags = registered.tags if registered else {}
    alias = registered.aliases.get(CHAMPION) if registered else None
    records = [
        (key, json.loads(tags[key])) for key in sorted(tags) if key.startswith(MOVE_TAG_PREFIX)
    ]
    moves = tuple((key, Move(**{k: v for k, v in r.items() if k != PENDING})) for key, r in records)
    pending = moves[-1] if records and records[-1][1].get(PENDING) else None
    if pending and alias != pending[1].to_version:  # its process died before moving the alias
        moves = moves[:-1]
    return _State(alias, moves, pending)


@contextmanager
def _lock(client: MlflowClient, production: str) -> Iterator[Callable[[], None]]:
    """Hold `<production>.lock`; yield a check that it is still held (not taken over)."""
    name = f"{production}{LOCK_SUFFIX}"
    tags = {**lease_tags(LOCK_LEASE_S), TOKEN_TAG: uuid.uuid4().hex[:12]}
    deadline = time.monotonic() + LOCK_WAIT_S
    while not _take(client, name, tags):
        if time.monotonic() > deadline:
            raise BranchflowError(_busy(client, name))
        time.sleep(LOCK_POLL_S)

    def confirm() -> None:
        if not _holds(client, name, tags):
            raise BranchflowError(
                f"{name} was taken over (this command outlived its {LOCK_LEASE_S} s lease); "
                "nothing was moved; run again"
            )

    try:
        yield confirm
    finally:
        if _holds(client, name, tags):
            client.delete_registered_model(name)


def _take(client: MlflowClient, name: str, tags: Mapping[str, str]) -> bool:
    """Create the lock `name`; False when another holds it (removed for the next try if its
    holder is gone)."""
    from mlflow.exceptions import MlflowException

    description = "branchflow's lock for moving the champion; deleted when the move ends"
    try:
        client.create_registered_model(name, tags=dict(tags), description=description)
        return True
    except MlflowException as exc:
        # The server answers RESOURCE_DOES_NOT_EXIST when the lock it found taken is deleted
        # before it reads it back for its "already exists" error: held, then just released.
        if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST"):
            raise
    held = _registered_model(client, name)
    if held is not None and holder_gone(held.tags):
        _remove_stale(client, held, tags)
    return False


def _remove_stale(client: MlflowClient, lock: RegisteredModel, tags: Mapping[str, str]) -> None:
    """Delete `lock`, whose holder is gone, while holding the lock `<lock>.<its token>`: of the
    takers that saw this lock only one deletes it, and none deletes a later lock of its name."""
    guard = f"{lock.name}.{lock.tags.get(TOKEN_TAG, 'untokened')}"
    if not _take(client, guard, tags):
        return
    try:
        current = _registered_model(client, lock.name)
        if current is not None and current.tags.get(TOKEN_TAG) == lock.tags.get(TOKEN_TAG):
            _delete_stale(client, lock)
    finally:
        client.delete_registered_model(guard)


def _delete_stale(client: MlflowClient, lock: RegisteredModel) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.delete_registered_model(lock.name)
    except MlflowException as exc:
        if exc.error_code == "PERMISSION_DENIED":
            raise BranchflowError(
                f"{lock.name} is a lock left by {lock.tags.get(OWNER_TAG, 'an unknown process')}, "
                "which is gone, and these credentials may not delete it; delete it with its "
                "creator's or an MLflow admin's credentials"
            ) from None
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":  # its holder woke up and released it
            raise


def _holds(client: MlflowClient, name: str, tags: Mapping[str, str]) -> bool:
    held = _registered_model(client, name)
    return held is not None and all(held.tags.get(key) == value for key, value in tags.items())


def _busy(client: MlflowClient, name: str) -> str:
    held = _registered_model(client, name)
    tags = held.tags if held else {}
    until = datetime.fromtimestamp(float(tags.get(LEASE_TAG) or 0), UTC).isoformat(
        timespec="seconds"
    )
    return (
        f"{name} is held by {tags.get(OWNER_TAG, 'another process')} (lease until {until}): "
        f"another promote or rollback is under way; run again when it has finished"
    )


def _key(move: Move, after: str | None) -> str:
    """The record's tag key: its time, or just after the key `after` of the last record if that
    sorts later (a host whose clock runs ahead made it), so records sort in the order made."""
    when = datetime.fromisoformat(move.when)
    if after is not None:
        last = datetime.strptime(after.removeprefix(MOVE_TAG_PREFIX).rpartition(".")[0], KEY_TIME)
        when = max(when, last.replace(tzinfo=UTC) + timedelta(microseconds=1))
    return f"{MOVE_TAG_PREFIX}{when.strftime(KEY_TIME)}.{uuid.uuid4().hex[:8]}"


def _record(client: MlflowClient, key: str, move: Move, pending: bool = False) -> None:
    record = {**dataclasses.asdict(move), **({PENDING: True} if pending else {})}
    client.set_registered_model_tag(move.model, key, json.dumps(record))


def _rollback_target(moves: list[Move]) -> str | None:
    """The champion before the latest promotion not yet undone: rollbacks undo like a stack."""
    undone = 0
    for move in reversed(moves):
        if move.action == "rollback":
            undone += 1
        elif undone:
            undone -= 1
        else:
            return move.from_version
    return None


def _sorted(versions: Any) -> tuple[str, ...]:
    return tuple(sorted(versions, key=int))


def describe(result: Registration | Move) -> str:
    """One line for people about a registration or a champion move."""
    if isinstance(result, Registration):
        if result.created:
            return f"registered {result.model} version {result.version} (alias {CANDIDATE})"
        return (
            f"{result.model} version {result.version} already holds this model package "
            f"(sha256 {result.package_sha256[:12]}); alias {CANDIDATE} points to it"
        )
    if result.from_version == result.to_version:
        return f"{result.model}@{result.alias} is already version {result.to_version}; no change"
    via = f"copy of {result.source}" if result.action == "promote" else "rollback"
    return (
        f"{result.model}@{result.alias}: version {result.from_version or 'none'} -> "
        f"{result.to_version} ({via})"
    )


def history_lines(moves: list[Move]) -> list[str]:
    """One line per move, oldest first."""
    return [
        f"{m.when}  {m.action:<8}  {m.from_version or '-':>4} -> {m.to_version:<4}  by {m.who}"
        f"  at {m.commit[:7]}{f'  from {m.source}' if m.source else ''}"
        f"{f'  reason: {m.reason}' if m.reason else ''}"
        for m in moves
    ]


def prune_lines(plan: PrunePlan) -> list[str]:
    """What was (or would be) removed and what was kept, one line each."""
    verb = "would delete" if plan.dry_run else "deleted"
    lines = [f"{verb} model version {plan.model}/{v}" for v in plan.versions]
    lines += [f"{verb} experiment {name}" for name in plan.experiments]
    lines += [
        f"kept model version {plan.model}/{v} (aliased or promoted)" for v in plan.kept_versions
    ]
    lines += [
        f"kept experiment {name} (holds a kept version's run)" for name in plan.kept_experiments
    ]
    return lines or [f"nothing to prune for branch {plan.branch!r}"]
