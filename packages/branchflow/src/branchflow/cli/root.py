"""The project a command acts on: found from the working directory, so that a command run in a
subfolder acts on the project (and names it) as one run at its root does."""

from __future__ import annotations

from pathlib import Path


def here() -> Path:
    from branchflow.workspace.context import project_root

    return project_root(Path.cwd())
