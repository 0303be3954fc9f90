"""Generated files, one mechanism for every generator (`branchflow init` writes `.github/`,
`branchflow azureml compile` writes `pipelines/azureml/`): a `Plan` holds each file's new text
and the files an earlier run generated that this one no longer does; it says what differs on
disk, shows it as a diff (`--check`), and applies it, each file atomically."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from branchflow.files import inside, write_atomic


@dataclass(frozen=True)
class Plan:
    """Every generated file's text by path from the root, the stale files to delete, and the
    files the generator would write but the project wrote itself, which it leaves alone."""

    files: dict[str, str]
    stale: list[str]
    kept: tuple[str, ...] = ()

    def changes(self, root: Path) -> list[str]:
        """The paths whose text on disk differs from the plan, stale ones included."""
        differ = (path for path, text in self.files.items() if _read(root, path) != text)
        return sorted({*self.stale, *differ})

    def diff(self, root: Path) -> str:
        """A unified diff from the files on disk to the plan; empty when they agree."""
        return diff_texts(root, {**dict.fromkeys(self.stale), **self.files})

    def apply(self, root: Path) -> list[str]:
        """Delete the stale files and write the changed ones; return what changed."""
        changed = self.changes(root)
        for path in changed:
            inside(root, root / path)
        for path in self.stale:
            (root / path).unlink()
        for path in changed:
            if path in self.files:
                write_atomic(root / path, self.files[path])
        return changed


def diff_texts(root: Path, files: Mapping[str, str | None]) -> str:
    """A unified diff from the files on disk under `root` to `files` (by path from `root`;
    None: the file goes); empty when they agree."""
    chunks: list[str] = []
    for path in sorted(files):
        new, old = files[path], _read(root, path)
        chunks += difflib.unified_diff(
            (old or "").splitlines(keepends=True),
            (new or "").splitlines(keepends=True),
            fromfile=f"a/{path}" if old is not None else "/dev/null",
            tofile=f"b/{path}" if new is not None else "/dev/null",
        )
    return "".join(chunks)


def _read(root: Path, path: str) -> str | None:
    file = inside(root, root / path)
    return file.read_text(encoding="utf-8") if file.is_file() else None
