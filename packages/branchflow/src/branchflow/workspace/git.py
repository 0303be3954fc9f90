"""The one git runner: every git command branchflow runs goes through `git`."""

from __future__ import annotations

import subprocess
from pathlib import Path

from branchflow.errors import BranchflowError


def git(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run git with an argument list (never a shell) in `root`."""
    try:
        result = subprocess.run(
            ["git", *args],
            cwd=root,
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="surrogateescape",
            check=False,
        )
    except FileNotFoundError as exc:
        raise BranchflowError(f"cannot run git in {root}: {exc.strerror}; install git") from exc
    if check and result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["no message"])[0]
        raise BranchflowError(f"git {' '.join(args)} failed in {root}: {reason}")
    return result
