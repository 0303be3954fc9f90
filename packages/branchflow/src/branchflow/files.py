"""The text files branchflow generates: written atomically, and diffed for `--check`."""

from __future__ import annotations

import difflib
import os
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file beside it and a rename, so a reader or
    a crash sees the old text or the new, never part; the file keeps its mode (new: 0644)."""
    path.parent.mkdir(parents=True, exist_ok=True)
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


def diff_texts(root: Path, files: Mapping[str, str | None]) -> str:
    """A unified diff from the files on disk under `root` to `files` (by path from `root`;
    None: the file goes); empty when they agree."""
    chunks: list[str] = []
    for path in sorted(files):
        target, new = root / path, files[path]
        old = target.read_text(encoding="utf-8") if target.is_file() else None
        chunks += difflib.unified_diff(
            (old or "").splitlines(keepends=True),
            (new or "").splitlines(keepends=True),
            fromfile=f"a/{path}" if old is not None else "/dev/null",
            tofile=f"b/{path}" if new is not None else "/dev/null",
        )
    return "".join(chunks)
