"""Atomic writes: every file branchflow writes is replaced whole or not at all; and the check
that a path in the repository stays in it, whatever symlinks it crosses."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from branchflow.errors import BranchflowError


def inside(root: Path, path: Path) -> Path:
    """`path`, once it is known to stay under `root` with every symlink on the way followed: a
    committed link must not let branchflow read or write outside the repository."""
    resolved = path.resolve()
    if not resolved.is_relative_to(root.resolve()):
        shown = path.relative_to(root) if path.is_relative_to(root) else path
        raise BranchflowError(
            f"{shown}: a symlink leads out of the repository (to {resolved}); branchflow neither "
            "reads nor writes through it: make it a file or folder in the repository"
        )
    return path


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file beside it and a rename, so a reader or
    a crash sees the old text or the new, never part; the file keeps its mode (new: 0644)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not path.is_file():
        raise BranchflowError(f"{path}: not a regular file; branchflow writes only files")
    mode = stat.S_IMODE(path.stat().st_mode) if path.is_file() else 0o644
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
