"""The project's lock (`uv.lock`) as pinned requirements: one source for every environment.

The Azure ML environment and the registered model's requirements are exported from the lock by
uv itself, so they pin exactly what CI and laptops install. A project without a lock keeps what
its config or `[project].dependencies` say.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from collections.abc import Sequence
from pathlib import Path

from branchflow.errors import BranchflowError

LOCK_FILE = "uv.lock"
REQUIREMENTS_FILE = "requirements.txt"  # pip's: the install of a project without a lock
# Where DVC projects keep their requirements*.txt: the root, else src/ (DVC's get-started).
REQUIREMENTS_FOLDERS = (".", "src")
# `torch==2.11.0+cpu`: a local version label names a build on one index, not a release.
_LOCAL_LABEL = re.compile(r"^([A-Za-z0-9._-]+==[^+;\s]+)\+[A-Za-z0-9.]+")


def environment_requirements(
    root: Path, configured: Sequence[str] | None, groups: Sequence[str] = ()
) -> tuple[str, ...]:
    """What an environment built for the project installs: the configured list if any, else the
    lock's pins, else the requirements of `requirements.txt` (at the root or in src/), else
    `[project].dependencies` as written."""
    if configured is not None:
        return tuple(configured)
    if has_lock(root):
        return locked_requirements(root, groups)
    main = [path for path in requirements_files(root) if Path(path).name == REQUIREMENTS_FILE]
    if main:
        return read_requirements(root / main[0])
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file():
        return ()
    with pyproject.open("rb") as handle:
        return tuple(tomllib.load(handle).get("project", {}).get("dependencies", []))


def requirements_files(root: Path) -> tuple[str, ...]:
    """The project's `requirements*.txt`, by path from the root: those at the root, else those
    in src/."""
    for folder in REQUIREMENTS_FOLDERS:
        found = sorted((root / folder).glob("requirements*.txt"))
        if any(path.is_file() for path in found):
            return tuple(p.relative_to(root).as_posix() for p in found if p.is_file())
    return ()


def read_requirements(path: Path) -> tuple[str, ...]:
    """A requirements file's requirements, without comments, blank lines and pip options."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return tuple(line for line in lines if line and not line.startswith("-"))


def has_lock(root: Path) -> bool:
    return (root / LOCK_FILE).is_file()


def locked_requirements(root: Path, groups: Sequence[str] = ()) -> tuple[str, ...]:
    """Pins of the root project's runtime dependencies plus `groups`, from `root/uv.lock`.

    The project itself and workspace members are left out (they travel as code); local version
    labels are dropped, so `torch==2.11.0` takes the build of whichever index serves it.
    """
    command = [*_uv(), "export", "--frozen", "--no-default-groups", "--no-emit-project"]
    command += ["--no-emit-workspace", "--no-hashes", "--no-header", "--no-annotate"]
    for group in groups:
        command += ["--group", group]
    result = subprocess.run(command, cwd=root, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["no message"])[-1]
        raise BranchflowError(f"{root / LOCK_FILE}: uv export failed ({reason}); run `uv lock`")
    lines = (line.strip() for line in result.stdout.splitlines())
    return tuple(_LOCAL_LABEL.sub(r"\1", line) for line in lines if line and line[0] != "#")


def _uv() -> list[str]:
    """The uv command: on PATH, else the `uv` package of this interpreter."""
    found = shutil.which("uv")
    if found:
        return [found]
    try:
        from uv import find_uv_bin

        return [find_uv_bin()]
    except (ImportError, FileNotFoundError):
        raise BranchflowError(
            f"{LOCK_FILE}: exporting the lock needs uv; install it (pip install uv)"
        ) from None
