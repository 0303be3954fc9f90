"""`branchflow pin`: a small committed file naming the production champion's exact version.

A pipeline that uses the production model (a scoring stage) depends on the file, not on the
alias: it reruns when a promotion or rollback moves the pin, and loads the pinned version only,
checking its artifact's sha256. The file changes only when the champion does, so a promotion is
a one-line diff of `version` and `sha256`.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

from branchflow.errors import BranchflowError
from branchflow.files import write_atomic
from branchflow.registry.champion import CHAMPION, FILES_SHA_TAG, current_champion
from branchflow.registry.package import served_sha256, tree_sha256
from branchflow.registry.register import MODEL_SHA_TAG
from branchflow.settings import load_settings
from branchflow.tracking import connect, mlflow_errors, read_store
from branchflow.workspace.context import resolve_context
from branchflow.workspace.naming import names_for

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion


SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Pin:
    """A registered model version and the sha256 of its artifact (see `artifacts_sha256`)."""

    name: str
    version: str
    sha256: str


def pin(root: Path, out: Path, env: Mapping[str, str] = os.environ) -> tuple[Pin, bool]:
    """Pin the production model's current champion into `out`, once its files are checked
    against the digest its promotion recorded; True when `out` changed."""
    settings = load_settings(root)
    production = names_for(resolve_context(root, env, settings), settings).production_model
    store = read_store(root, env)
    client = connect(store)
    with mlflow_errors(store):
        champion = current_champion(client, production)
        if champion is None:
            raise BranchflowError(
                f"{production} has no @{CHAMPION} to pin; promote a version first "
                "(branchflow promote models:/<model>@candidate)"
            )
        declared = settings.production.declared
        if declared and out.resolve() == (root / declared).resolve():
            _check_declared(root, declared, production, str(champion.version))
        found = Pin(production, str(champion.version), checked_sha256(champion))
    return found, write_pin(out, found)


def _check_declared(root: Path, path: str, production: str, champion: str) -> None:
    """Refuse to rewrite the declaration of production with a champion it does not name: that
    champion was moved outside git, and the file is what decides."""
    declared = read_pin(root, path, production)
    if declared is not None and declared.version != champion:
        raise BranchflowError(
            f"{path} declares production (version {declared.version}), but @{CHAMPION} is "
            f"version {champion}: run `branchflow reconcile --restore`, or promote with --declare"
        )


def read_pin(root: Path, path: str, production: str) -> Pin | None:
    """The pin in `path` (None: no such file), checked: exactly the production model's name,
    a version number and a sha256."""
    try:
        document = json.loads((root / path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BranchflowError(f"{path}: not JSON ({exc}); restore it from git") from None
    if not isinstance(document, dict) or set(document) != {f.name for f in fields(Pin)}:
        raise BranchflowError(f"{path}: must hold exactly name, version and sha256")
    pin = Pin(**document)
    if pin.name != production:
        raise BranchflowError(
            f"{path}: names {pin.name!r}, but the production model is {production!r}; only a "
            "version of the production model can be declared"
        )
    if not (isinstance(pin.version, str) and pin.version.isdigit()):
        raise BranchflowError(
            f"{path}: version must be a version number as text, got {pin.version!r}"
        )
    if not (isinstance(pin.sha256, str) and SHA256.fullmatch(pin.sha256)):
        raise BranchflowError(f"{path}: sha256 must be 64 hex digits, got {pin.sha256!r}")
    return pin


def tagged_sha256(version: ModelVersion) -> str | None:
    """The model bytes' sha256 that `register` (or, for a production copy, `promote`) tagged
    `version` with, if any."""
    return version.tags.get(MODEL_SHA_TAG) or None


def checked_sha256(version: ModelVersion) -> str:
    """The sha256 of `version`'s artifacts, after its files are checked against the digest
    `promote` recorded (a version without one is taken as it is)."""
    promoted = version.tags.get(FILES_SHA_TAG)
    tagged = tagged_sha256(version)
    if promoted is None and tagged:
        return tagged
    import mlflow

    uri = f"models:/{version.name}/{version.version}"
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
        if promoted is not None and tree_sha256(local) != promoted:
            raise BranchflowError(
                f"{uri}: its files are not the ones promoted (their sha256 differs from its "
                f"{FILES_SHA_TAG} tag); roll back, or promote a version again"
            )
        sha = tagged or served_sha256(local)
    if sha is None:
        raise BranchflowError(
            f"{uri}: no {MODEL_SHA_TAG} tag and not one pyfunc artifact file, so no sha256 to "
            "pin; register it with branchflow"
        )
    return sha


def write_pin(out: Path, found: Pin) -> bool:
    """Write `found` to `out` atomically unless it already holds it; True when written."""
    text = json.dumps(asdict(found), indent=2) + "\n"
    try:
        if out.read_text(encoding="utf-8") == text:
            return False
    except (FileNotFoundError, UnicodeDecodeError):
        pass
    write_atomic(out, text)
    return True
