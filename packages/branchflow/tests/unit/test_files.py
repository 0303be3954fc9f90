"""Writes and paths: a file is replaced whole or not at all, never a device or a FIFO, and no
path through a link leaves the repository."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from branchflow.errors import BranchflowError
from branchflow.files import inside, write_atomic


def test_a_write_replaces_a_file_whole_and_keeps_its_mode(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "out.md"
    write_atomic(target, "one\n")
    target.chmod(0o600)
    write_atomic(target, "two\n")
    assert target.read_text() == "two\n" and target.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in target.parent.iterdir()] == ["out.md"]  # no temporary left


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_a_write_never_replaces_what_is_not_a_file(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "out.md"
    os.mkfifo(target) if kind == "fifo" else target.mkdir()
    with pytest.raises(BranchflowError, match="not a regular file; branchflow writes only files"):
        write_atomic(target, "text\n")
    assert target.exists() and not target.is_file()


def test_a_path_through_a_link_out_of_the_repository_is_refused(tmp_path: Path) -> None:
    root, outside = tmp_path / "repo", tmp_path / "outside"
    (root / "inner").mkdir(parents=True)
    outside.mkdir()
    (root / "away").symlink_to(outside)
    (root / "near").symlink_to(root / "inner")
    assert inside(root, root / "near" / "file") == root / "near" / "file"
    with pytest.raises(BranchflowError, match="away/file: a symlink leads out of the repository"):
        inside(root, root / "away" / "file")
