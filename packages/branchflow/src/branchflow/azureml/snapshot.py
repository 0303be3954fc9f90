"""Per-stage code snapshots: each Azure ML component uploads exactly what its stage reads.

A stage's snapshot holds its git-tracked dependencies (declared in `dvc.yaml`), its params
files cut down to the declared keys, and the stage wrapper as `branchflow_wrapper.py`, all at
their paths from the repository root. Azure ML versions a component's code by the hash of its
folder, so a node's snapshot changes exactly when one of those changes: editing `train.py`
uploads a new train snapshot only, and a test, a doc or a local MLflow store changes none.

`write_snapshots` puts them beside the compiled YAML that names them
(`<out>/components/<node>.yml` has `code: ../snapshots/<node>`): a build output, ignored by
git, rebuilt by `compile`, by validation and by `submit`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import yaml

from branchflow.azureml import wrapper
from branchflow.errors import BranchflowError
from branchflow.files import inside
from branchflow.workspace.dag import Dag, ParamsFile, Step
from branchflow.workspace.git import git

SNAPSHOTS = "snapshots"
WRAPPER_FILE = "branchflow_wrapper.py"


def snapshot_files(root: Path, step: Step) -> dict[str, bytes]:
    """The content of `step`'s code snapshot, by path from the repository root."""
    files = {path: inside(root, root / path).read_bytes() for path in _dependency_files(root, step)}
    for params in step.params:
        files[params.path] = _params_bytes(root, params)
    if WRAPPER_FILE in files:
        raise BranchflowError(
            f"{step.stage}: a dependency named {WRAPPER_FILE} would hide the stage wrapper at "
            "the snapshot root; rename it"
        )
    files[WRAPPER_FILE] = Path(wrapper.__file__).read_bytes()
    return files


def write_snapshots(root: Path, out: str, dag: Dag) -> None:
    """Write every step's snapshot under `root/out/snapshots/`, replacing what was there."""
    folder = inside(root, root / out / SNAPSHOTS)
    shutil.rmtree(folder, ignore_errors=True)
    for step in dag.steps:
        for path, content in snapshot_files(root, step).items():
            target = folder / step.node / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)


def _dependency_files(root: Path, step: Step) -> Iterator[str]:
    """Every file of the step's git-tracked dependencies, the way git lists them (so ignored
    files such as `__pycache__/` stay out); a path git does not know is read from disk."""
    for path in step.snapshot_paths:
        listed = git(root, "ls-files", "-z", "--cached", "--others", "--exclude-standard", path)
        files = [name for name in listed.stdout.split("\0") if name and (root / name).is_file()]
        if not files and (root / path).is_file():
            files = [path]
        if not files:
            raise BranchflowError(
                f"{step.stage}: dependency {path} has no files for the code snapshot; add them "
                "to git or fix dvc.yaml"
            )
        yield from files


def _params_bytes(root: Path, params: ParamsFile) -> bytes:
    """The params file as the node gets it: only the declared keys, when they are known."""
    if params.values is None:
        return inside(root, root / params.path).read_bytes()
    if params.path.endswith(".json"):
        return (json.dumps(params.values, indent=2, sort_keys=True) + "\n").encode()
    return yaml.safe_dump(params.values, sort_keys=True).encode()
