"""Upload a DVC data source to its content-addressed datastore path, once.

The path `<data_prefix>/<md5>/<name>/` is named by the source's DVC md5, so what is there is
never replaced by other data. Each blob carries its file's MD5 (`Content-MD5`); a file whose
blob already holds the same MD5 is not sent again, so a second upload sends nothing and an
interrupted one resumes where it stopped.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from branchflow.errors import BranchflowError


@dataclass(frozen=True)
class Uploaded:
    """How many files were sent and how many the datastore already held."""

    sent: int
    kept: int


def upload_source(
    container: Any,
    local: Path,
    prefix: str,
    log: Callable[[str], None] = lambda _: None,
    files: Sequence[Path] | None = None,
) -> Uploaded:
    """Upload the file or folder `local` to `<prefix>/<its name>` in a blob `container`
    (an `azure.storage.blob.ContainerClient`): `files` of it (default: every file)."""
    from azure.storage.blob import ContentSettings

    if not local.exists():
        raise BranchflowError(f"{local} not found; `dvc pull` it before submitting")
    if files is None:
        files = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file())
    base = f"{prefix.strip('/')}/{local.name}"
    held = {
        blob.name: bytes(blob.content_settings.content_md5 or b"")
        for blob in container.list_blobs(name_starts_with=base)
    }
    sent = 0
    for file in files:
        name = base if file == local else f"{base}/{file.relative_to(local).as_posix()}"
        digest = _md5(file)
        if held.get(name) == digest:
            continue
        with file.open("rb") as handle:
            container.upload_blob(
                name,
                handle,
                overwrite=True,
                content_settings=ContentSettings(content_md5=bytearray(digest)),
            )
        sent += 1
    log(f"{local.name}: sent {sent} files, {len(files) - sent} already there")
    return Uploaded(sent, len(files) - sent)


def _md5(path: Path) -> bytes:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, lambda: hashlib.md5(usedforsecurity=False)).digest()
