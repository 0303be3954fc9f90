"""The production champion: promote, rollback and history.

Aliases only (registry stages are deprecated in MLflow). The production model carries
`champion` on a copy of the promoted version: its files, downloaded and logged again to a run
of the experiment named as the production model, which `promote` creates and only production's
credentials may write (MLflow's auth app judges artifact writes by experiment), with the source
run's metrics and the sha256 of every file (`FILES_SHA_TAG`). So nothing the source's owner (a
branch's token) writes after promotion reaches what production loads or the gate reads.

Every champion move is stored in MLflow as a JSON tag `branchflow.move.<UTC time>.<id>` of
the production model, which `history` reads back.

Concurrency and crashes (MLflow offers no compare-and-set, so):

- Moving `champion`: under a lock, the registered model `<production>.lock`, which only one
  process can create (the server answers RESOURCE_ALREADY_EXISTS to the others, who wait up to
  `LOCK_WAIT_S`). It carries its holder (`host:pid`), a lease and a token; a lock whose holder
  is gone (lease passed, or a dead process of this host) is deleted by the one taker that
  creates the guard `<lock>.<token>` (itself such a lock), so that no taker deletes a newer
  lock; a holder checks it still holds the lock right before it writes. Any account may
  create a registered model, so a lock these credentials may not edit is foreign (a PR token
  made it): the lock moves to a new name, recorded in the production model's `LOCK_NAME_TAG`
  (which only production's credentials can write), and a holder also checks, before it writes,
  that the tag still names its lock. Under the lock the champion and the last record must
  still be what the command saw when it started (compare-and-set), and the alias must match
  the last record (else it was moved outside branchflow); otherwise the command fails and
  moves nothing.
- Journal: a move is recorded as pending, then the alias moved, then the record confirmed. A
  pending record whose alias does not show its `to_version` never happened (its process died
  first): `history` and `rollback` ignore it and the next move deletes it; one whose alias
  does happened, and the next move confirms it. An alias that differs from the last confirmed
  record was moved outside branchflow.
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import os
import re
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from branchflow.errors import BranchflowError
from branchflow.registry.client import open_registry, registered_model, version_uri
from branchflow.registry.package import DOWNLOAD_NOTE, served_sha256, tree_sha256
from branchflow.registry.register import MODEL_ARTIFACT, MODEL_SHA_TAG
from branchflow.tracking import (
    OWNER_TAG,
    Store,
    holder_gone,
    lease_tags,
    lease_until,
    mlflow_errors,
)
from branchflow.workspace.context import Context
from branchflow.workspace.naming import names_for

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run
    from mlflow.entities.model_registry import ModelVersion, RegisteredModel

CHAMPION = "champion"
MOVE_TAG_PREFIX = "branchflow.move."
KEY_TIME = "%Y%m%dT%H%M%S.%fZ"  # a move record's key: `<MOVE_TAG_PREFIX><UTC time>.<id>`
PENDING = "pending"  # in a move record until its alias has moved
LOCK_SUFFIX = ".lock"  # `<production>.lock`: the registered model that locks champion moves
LOCK_LEASE_S = 60  # a move takes seconds; a holder silent for longer counts as gone
LOCK_WAIT_S = 15
LOCK_POLL_S = 0.2
TOKEN_TAG = "branchflow.token"  # on a lock: which taking of it this is
LOCK_NAME_TAG = "branchflow.lock"  # on the production model: its lock's name, once moved
SOURCE_TAG = "branchflow.source"  # on a production version: the models:/ URI it copies
FILES_SHA_TAG = "files_sha256"  # on a production version: see `tree_sha256`
MODELS_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>[0-9]+))")


@dataclass(frozen=True)
class Move:
    """One move of the champion alias; `from_version == to_version` means nothing moved."""

    action: str  # "promote", "rollback" or "reconcile" (to the version declared in git)
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


def promote(
    root: Path, model_uri: str, reason: str = "", env: Mapping[str, str] = os.environ
) -> Move:
    """Copy the version `model_uri` names into the production model (once) and make it champion.

    `model_uri` is `models:/<name>@<alias>` or `models:/<name>/<version>`. A version of the
    production model itself is made champion without a copy.
    """
    match = model_uri_parts(model_uri)
    settings, context, store, client = open_registry(root, env)
    if settings.production.declared:
        raise BranchflowError(
            f"production is declared in {settings.production.declared}: run `branchflow promote "
            f"--declare {model_uri}` and merge the pull request that changes it"
        )
    production = names_for(context, settings).production_model
    with mlflow_errors(store, denied(production)):
        source = named_version(client, match["name"], match["alias"], match["version"], model_uri)
        source_uri = f"models:/{source.name}/{source.version}"
        with moving(client, production) as (state, write):
            champion = _champion_version(client, production, state)
            held = (copied_from(champion), version_uri(champion)) if champion else ()
            if champion is not None and source_uri in held:
                return new_move(
                    "promote", production, champion, champion.version, source_uri, context, env
                )
            copy = source.name != production
            target = copy_to_production(client, store, source, production) if copy else source
            move = new_move(
                "promote", production, champion, target.version, source_uri, context, env, reason
            )
            write(move)
    return move


def model_uri_parts(model_uri: str) -> re.Match[str]:
    """`models:/<name>@<alias>` or `models:/<name>/<version>`, parsed; else a one-line error."""
    match = MODELS_URI.fullmatch(model_uri)
    if match is None:
        raise BranchflowError(
            f"{model_uri!r} is not a model version URI; use models:/<name>@<alias> "
            "or models:/<name>/<version>"
        )
    return match


def copied_from(version: ModelVersion) -> str:
    """The `models:/` URI a production version copies (MLflow's `source` for copies made before
    promote copied the files)."""
    return version.tags.get(SOURCE_TAG) or version.source or ""


def copy_to_production(
    client: MlflowClient, store: Store, source: ModelVersion, production: str
) -> ModelVersion:
    """The version of `production` that copies `source`: the one an earlier promote (or one that
    crashed before moving the alias) made, else a new copy of its files, run metrics and run
    artifacts."""
    import mlflow
    from mlflow.entities import Metric

    source_uri = version_uri(source)
    for version in client.search_model_versions(f"name = '{production}'"):
        if copied_from(version) == source_uri:
            return version
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source_uri, dst_path=tmp))
        (local / DOWNLOAD_NOTE).unlink(missing_ok=True)
        run = _production_run(client, store, production, source_uri)
        client.log_artifacts(run.info.run_id, str(local), MODEL_ARTIFACT)
        if source.run_id:  # its plots, dvc.lock and per-unit results: the gate's champion side
            _copy_run_files(client, source.run_id, run.info.run_id)
        metrics = client.get_run(source.run_id).data.metrics if source.run_id else {}
        now = int(time.time() * 1000)
        copied = [Metric(key, value, now, 0) for key, value in metrics.items()]
        for start in range(0, len(copied), 1000):  # MLflow takes 1,000 metrics a batch
            client.log_batch(run.info.run_id, copied[start : start + 1000])
        client.set_terminated(run.info.run_id)
        served = served_sha256(local)
        tags = {**source.tags, SOURCE_TAG: source_uri, FILES_SHA_TAG: tree_sha256(local)}
        tags |= {MODEL_SHA_TAG: served} if served else {}
    artifacts = f"{run.info.artifact_uri}/{MODEL_ARTIFACT}"
    return client.create_model_version(production, artifacts, run.info.run_id, tags=tags)


def _copy_run_files(client: MlflowClient, source: str, target: str) -> None:
    """Log the artifacts of run `source` to run `target`, but for a `MODEL_ARTIFACT` folder."""
    import mlflow

    with tempfile.TemporaryDirectory() as folder:
        for index, entry in enumerate(client.list_artifacts(source)):
            if entry.path == MODEL_ARTIFACT:
                continue
            local = mlflow.artifacts.download_artifacts(
                run_id=source, artifact_path=entry.path, dst_path=f"{folder}/{index}"
            )
            if entry.is_dir:
                client.log_artifacts(target, local, entry.path)
            else:
                client.log_artifact(target, local)


def _production_run(client: MlflowClient, store: Store, production: str, source_uri: str) -> Run:
    """A new run, in the experiment named as `production` (for a local store, its artifacts in
    the store's folder, as `register`'s), to hold one promoted copy."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(production)
    location = f"{store.artifact_root}/{production}" if store.artifact_root else None
    experiment = found.experiment_id if found else client.create_experiment(production, location)
    try:
        return client.create_run(experiment, tags={SOURCE_TAG: source_uri})
    except MlflowException as exc:
        if exc.error_code != "PERMISSION_DENIED":
            raise
        raise BranchflowError(
            f"the experiment {production!r}, which holds production's copies, belongs to another "
            "account; delete it with an MLflow admin's credentials and promote again"
        ) from exc


def rollback(root: Path, reason: str = "", env: Mapping[str, str] = os.environ) -> Move:
    """Move `champion` back to the version that held it before the latest promotion."""
    settings, context, store, client = open_registry(root, env)
    if settings.production.declared:
        raise BranchflowError(
            f"production is declared in {settings.production.declared}: revert the commit that "
            f"last changed {settings.production.declared} and merge the revert"
        )
    production = names_for(context, settings).production_model
    with mlflow_errors(store, denied(production)), moving(client, production) as (state, write):
        target = _rollback_target([move for _, move in state.moves])
        if target is None:
            raise BranchflowError(
                f"{production} has no earlier champion to roll back to; see `branchflow history`"
            )
        champion = _champion_version(client, production, state)
        client.get_model_version(production, target)  # fails clearly if it was deleted
        move = new_move("rollback", production, champion, target, None, context, env, reason)
        write(move)
    return move


def history(root: Path, env: Mapping[str, str] = os.environ) -> list[Move]:
    """Every champion move of the production model that happened, oldest first."""
    settings, context, store, client = open_registry(root, env, read_only=True)
    with mlflow_errors(store):
        state = _state(client, names_for(context, settings).production_model)
    return [move for _, move in state.moves]


def named_version(
    client: MlflowClient, name: str, alias: str | None, version: str | None, uri: str
) -> ModelVersion:
    """The version a `models:/` URI names, or an error that says it does not exist."""
    registered = registered_model(client, name)
    number = registered.aliases.get(alias) if registered and alias else version
    if registered is None or number is None:
        raise BranchflowError(f"{uri} does not exist in the registry; check the name and alias")
    return client.get_model_version(name, number)


def current_champion(client: MlflowClient, production: str) -> ModelVersion | None:
    registered = registered_model(client, production)
    version = registered.aliases.get(CHAMPION) if registered else None
    return client.get_model_version(production, version) if version else None


def _champion_version(client: MlflowClient, production: str, state: _State) -> ModelVersion | None:
    return client.get_model_version(production, state.alias) if state.alias else None


def new_move(
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


def denied(production: str) -> str:
    return (
        f"moving {production}@{CHAMPION} needs the production environment's credentials "
        f"(permission to edit {production}); PR builds may only register and read"
    )


@contextmanager
def moving(
    client: MlflowClient, production: str, repair: bool = False
) -> Iterator[tuple[_State, Callable[[Move], None]]]:
    """Lock `production` for one champion move; yield its state, checked unchanged since this
    command began, and the function that records and makes a move. With `repair` (reconcile),
    the state is the one found under the lock, wherever the alias was moved from."""
    require_edit(client, production)
    seen = _state(client, production)
    with _lock(client, production) as confirm:
        state = _checked(client, production, seen, repair)

        def write(move: Move) -> None:
            confirm()
            key = _key(move, state.stamp[1])
            _record(client, key, move, pending=True)
            client.set_registered_model_alias(production, CHAMPION, move.to_version)
            _record(client, key, move)

        yield state, write


def require_edit(client: MlflowClient, production: str) -> None:
    """Create `production` if it is missing, else make a no-op edit of it: a token that may not
    edit it (a PR build's) stops here, before it creates or locks anything."""
    registered = registered_model(client, production)
    if registered is None:
        client.create_registered_model(production)
    else:
        client.update_registered_model(production, registered.description or "")


def _checked(client: MlflowClient, production: str, seen: _State, repair: bool) -> _State:
    """The state under the lock, its pending record confirmed or deleted; unless `repair`, an
    error when the champion was moved outside branchflow or since `seen`."""
    state = _state(client, production)
    if state.pending and state.alias == state.pending[1].to_version:
        _record(client, *state.pending)
    elif state.pending:
        client.delete_registered_model_tag(production, state.pending[0])
    if repair:
        return _state(client, production)
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
    registered = registered_model(client, production)
    tags = registered.tags if registered else {}
    alias = registered.aliases.get(CHAMPION) if registered else None
    records = [
        (key, _record_of(production, key, tags[key]))
        for key in sorted(tags)
        if key.startswith(MOVE_TAG_PREFIX)
    ]
    moves = tuple((key, Move(**{k: v for k, v in r.items() if k != PENDING})) for key, r in records)
    pending = moves[-1] if records and records[-1][1].get(PENDING) else None
    if pending and alias != pending[1].to_version:  # its process died before moving the alias
        moves = moves[:-1]
    return _State(alias, moves, pending)


def _record_of(production: str, key: str, text: str) -> dict[str, Any]:
    """The move record in the tag `key` of `production`; an error when it is not one that
    branchflow wrote."""
    fields = {field.name for field in dataclasses.fields(Move)}
    try:
        record = json.loads(text)
    except (ValueError, RecursionError):
        record = None
    if not isinstance(record, dict) or set(record) - {PENDING} != fields:
        raise BranchflowError(
            f"{production}'s tag {key} is not a move record branchflow wrote; delete it (MLflow "
            "UI or delete_registered_model_tag) with production's credentials, then run again"
        )
    return record


@contextmanager
def _lock(client: MlflowClient, production: str) -> Iterator[Callable[[], None]]:
    """Hold the lock of `production`; yield a check that it is still held (not taken over, and
    still the lock `production` names)."""
    name = _lock_name(client, production)
    tags = {**lease_tags(LOCK_LEASE_S), TOKEN_TAG: uuid.uuid4().hex[:12]}
    deadline = time.monotonic() + LOCK_WAIT_S
    while not _take(client, name, tags):
        held = registered_model(client, name)
        if held is not None and _foreign(client, held):
            name = _rename_lock(client, production)
        elif held is not None and holder_gone(held.tags):
            _remove_stale(client, held, tags)
        elif time.monotonic() > deadline:
            raise BranchflowError(_busy(client, name))
        else:
            time.sleep(LOCK_POLL_S)

    def confirm() -> None:
        if not _holds(client, name, tags) or _lock_name(client, production) != name:
            raise BranchflowError(
                f"{name} was taken over (this command outlived its {LOCK_LEASE_S} s lease, or "
                "another command moved the lock); nothing was moved; run again"
            )

    try:
        yield confirm
    finally:
        if _holds(client, name, tags):
            client.delete_registered_model(name)


def _lock_name(client: MlflowClient, production: str) -> str:
    """The lock's name: `<production>.lock`, or the one `production`'s `LOCK_NAME_TAG` names
    (which only production's credentials can set) since a foreign lock was found."""
    registered = registered_model(client, production)
    named = registered.tags.get(LOCK_NAME_TAG) if registered else None
    return named or f"{production}{LOCK_SUFFIX}"


def _foreign(client: MlflowClient, lock: RegisteredModel) -> bool:
    """Whether `lock` is one these credentials may not edit: another account made it (any
    account may create a registered model), so no promote or rollback ever holds it."""
    from mlflow.exceptions import MlflowException

    try:
        client.update_registered_model(lock.name, lock.description or "")
    except MlflowException as exc:
        if exc.error_code == "PERMISSION_DENIED":
            return True
        now = registered_model(client, lock.name)
        if now is not None and now.tags.get(TOKEN_TAG) == lock.tags.get(TOKEN_TAG):
            raise
    return False  # editable, or released (and maybe taken again) meanwhile


def _rename_lock(client: MlflowClient, production: str) -> str:
    """Move the lock to a new name, written on `production`, past a foreign lock; the name read
    back, since another command may have moved it too (its `confirm` then fails)."""
    fresh = f"{production}{LOCK_SUFFIX}.{uuid.uuid4().hex[:12]}"
    client.set_registered_model_tag(production, LOCK_NAME_TAG, fresh)
    return _lock_name(client, production)


def _take(client: MlflowClient, name: str, tags: Mapping[str, str]) -> bool:
    """Create the lock `name`; False when it exists."""
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
    return False


def _remove_stale(client: MlflowClient, lock: RegisteredModel, tags: Mapping[str, str]) -> None:
    """Delete `lock`, whose holder is gone, while holding the lock `<lock>.<its token>`: of the
    takers that saw this lock only one deletes it, and none deletes a later lock of its name."""
    from mlflow.exceptions import MlflowException

    guard = f"{lock.name}.{lock.tags.get(TOKEN_TAG, 'untokened')}"
    if not _take(client, guard, tags):
        return
    try:
        current = registered_model(client, lock.name)
        if current is not None and current.tags.get(TOKEN_TAG) == lock.tags.get(TOKEN_TAG):
            client.delete_registered_model(lock.name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":  # its holder woke up and released it
            raise
    finally:
        client.delete_registered_model(guard)


def _holds(client: MlflowClient, name: str, tags: Mapping[str, str]) -> bool:
    held = registered_model(client, name)
    return held is not None and all(held.tags.get(key) == value for key, value in tags.items())


def _busy(client: MlflowClient, name: str) -> str:
    held = registered_model(client, name)
    tags = held.tags if held else {}
    until = datetime.fromtimestamp(lease_until(tags), UTC).isoformat(timespec="seconds")
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
