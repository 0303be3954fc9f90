"""Production declared in git: a committed file names the champion, and `reconcile` makes the
registry match it.

The file is the pin a scoring pipeline reads (`branchflow.registry.pin`: name, version,
sha256), at `[tool.branchflow.production] declared`. `promote --declare` prepares a promotion
without moving anything: it copies the version into the production model (as `promote` does)
and writes the copy's pin to the file, for a pull request that reviewers and branch protection
judge. On merge, `reconcile --restore` (production's credentials) moves `champion` to the
declared version, journaled as a `reconcile` move that names the commit; a revert of the file
rolls back the same way. `reconcile` without `--restore` only compares: an alias moved outside
git is drift, a verdict (exit 1).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from branchflow.errors import BranchflowError
from branchflow.registry.champion import (
    CHAMPION,
    Move,
    copied_from,
    copy_to_production,
    current_champion,
    denied,
    model_uri_parts,
    moving,
    named_version,
    new_move,
    require_edit,
)
from branchflow.registry.client import open_registry
from branchflow.registry.pin import Pin, checked_sha256, read_pin, write_pin
from branchflow.settings import PRODUCTION_SECTION, Settings
from branchflow.tracking import mlflow_errors
from branchflow.workspace.git import git
from branchflow.workspace.naming import names_for


@dataclass(frozen=True)
class Reconciled:
    """What `reconcile` found: the declaration file and its pin, the alias it found, and the
    move it made (None: in sync, or drift left as it is)."""

    path: str
    declared: Pin
    found: str | None
    move: Move | None

    @property
    def in_sync(self) -> bool:
        return self.move is not None or self.found == self.declared.version


def declared_file(settings: Settings) -> str:
    """The declaration's path; an error when production is not declared in git."""
    if settings.production.declared is None:
        raise BranchflowError(
            f"production is not declared in git: set declared = <a pin file> in "
            f"{PRODUCTION_SECTION} (see docs/registry.md)"
        )
    return settings.production.declared


def read_declared(root: Path, path: str, production: str) -> Pin:
    """The pin in the declaration file `path`, checked (`read_pin`); an error when it is missing."""
    pin = read_pin(root, path, production)
    if pin is None:
        raise BranchflowError(
            f"{path} not found: production is declared there; `branchflow promote --declare` "
            "writes it"
        )
    return pin


@dataclass(frozen=True)
class Declaration:
    """A prepared promotion: the pin written, the source it copies, and the pull request's body
    (the declared version beside the current champion)."""

    path: str
    pin: Pin
    source: str
    body: str


def declare(root: Path, model_uri: str, env: Mapping[str, str] = os.environ) -> Declaration:
    """Copy the version `model_uri` names into the production model (once) and write the copy's
    pin to the declaration file; nothing moves until the change is merged and reconciled."""
    match = model_uri_parts(model_uri)
    settings, context, store, client = open_registry(root, env)
    path = declared_file(settings)
    production = names_for(context, settings).production_model
    with mlflow_errors(store, denied(production)):
        source = named_version(client, match["name"], match["alias"], match["version"], model_uri)
        require_edit(client, production)  # a PR token stops here, before it copies anything
        if source.name == production:
            copy = source
        else:
            copy = copy_to_production(client, store, source, production)
        pin = Pin(production, str(copy.version), checked_sha256(copy))
        champion = current_champion(client, production)
        metrics = {
            side: client.get_run(version.run_id).data.metrics if version and version.run_id else {}
            for side, version in (("champion", champion), ("declared", copy))
        }
    write_pin(root / path, pin)
    source_uri = f"models:/{source.name}/{source.version}"
    names = list(settings.model.key_metrics if settings.model else ()) or list(
        settings.gate.metric_names()
    )
    body = _body(path, pin, source_uri, champion.version if champion else None, metrics, names)
    return Declaration(path, pin, source_uri, body)


def _body(
    path: str,
    pin: Pin,
    source: str,
    champion: str | None,
    metrics: Mapping[str, Mapping[str, float]],
    names: list[str],
) -> str:
    """The promotion pull request's body, in markdown."""
    declared = f"models:/{pin.name}/{pin.version}"
    old = f"champion v{champion}" if champion else "no champion yet"
    rows = [
        f"| `{name}` | {_number(metrics['champion'].get(name))} | "
        f"{_number(metrics['declared'].get(name))} |"
        for name in names
    ]
    return "\n".join(
        [
            f"Declares `{declared}` (a copy of `{source}`, sha256 `{pin.sha256[:12]}`) as "
            f"production in `{path}`.",
            "",
            f"| metric | {old} | v{pin.version} |",
            "|---|---|---|",
            *rows,
            "",
            f"Merging makes it `@{CHAMPION}` (`branchflow reconcile --restore` on the default "
            "branch); reverting the merge rolls back.",
            "",
        ]
    )


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def reconcile(root: Path, *, restore: bool, env: Mapping[str, str] = os.environ) -> Reconciled:
    """Compare `champion` with the declared version and, if `restore`, move it there.

    The declared version must exist and hold the declared files (its sha256, checked as `pin`
    checks it). Under the champion's lock the alias is read afresh, so concurrent reconciles
    make one move and find the rest in sync."""
    settings, context, store, client = open_registry(root, env, read_only=not restore)
    path = declared_file(settings)
    production = names_for(context, settings).production_model
    declared = read_declared(root, path, production)
    with mlflow_errors(store, denied(production)):
        target = client.get_model_version(production, declared.version)
        if checked_sha256(target) != declared.sha256:
            raise BranchflowError(
                f"{path}: models:/{production}/{declared.version} holds other files than the "
                "declared sha256; declare the version again with `branchflow promote --declare`"
            )
        if not restore:
            registered = client.get_registered_model(production)
            return Reconciled(path, declared, registered.aliases.get(CHAMPION), None)
        with moving(client, production, repair=True) as (state, write):
            if state.alias == declared.version:
                return Reconciled(path, declared, state.alias, None)
            champion = client.get_model_version(production, state.alias) if state.alias else None
            reason = f"declared in {path} at {context.short_commit}"
            source = copied_from(target) or None
            move = new_move(
                "reconcile", production, champion, declared.version, source, context, env, reason
            )
            write(move)
    return Reconciled(path, declared, state.alias, move)


def declaration_log(root: Path, path: str) -> list[str]:
    """git's log of the declaration file, oldest first: `<date> <short sha> <author>: <subject>`."""
    result = git(
        root, "log", "--reverse", "--date=iso-strict", "--format=%ad %h %an: %s", "--", path
    )
    return result.stdout.splitlines()
