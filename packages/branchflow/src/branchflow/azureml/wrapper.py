"""The stage wrapper: run one DVC stage's own commands on Azure ML, as `dvc repro` runs them.

    python branchflow_wrapper.py --stage train --stage-hash HASH \\
        --in data/processed/features=/mnt/in --out models/model.pt=/mnt/out \\
        -- 'python -m badpixels.train data/processed/features models/model.pt'

From the root of the stage's code snapshot (the working directory) it links each input path
to `<mount>/<its name>`, removes stale outputs, runs each command with `$SHELL -c` in the
stage's `--wdir` (as DVC does, with `DVC_ROOT` and `DVC_STAGE` set), then copies each output
to `<mount>/<its name>`.

Under a distributed launch (`RANK` set) every process links the inputs, atomically, and only
rank 0 touches the outputs. With `--shard I/N` the node is one shard of the stage's work (a
sibling node per shard): the stage reads `BRANCHFLOW_SHARD_INDEX` and `BRANCHFLOW_SHARD_COUNT`
and writes its part to its own output folders. An input path given several times (the shards
of the stage that wrote it) becomes one folder holding every shard's files, linked.

It writes and deletes only inside the snapshot and the output mounts: paths must be
relative, below the snapshot root, and never reached through a symbolic link.

Standard library only: `compile` ships this file in every snapshot, so nodes need nothing
installed to run it.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import socket
import subprocess
import sys
from pathlib import Path, PurePosixPath

# The MLflow server of `[tool.branchflow.azureml] mlflow_tracking_uri`: the stage gets it as
# MLFLOW_TRACKING_URI (and registry URI), whatever the service set (its workspace, azureml://).
TRACKING_VARIABLE = "BRANCHFLOW_MLFLOW_TRACKING_URI"
# On a GPU size: the oldest NVIDIA driver branch the locked CUDA runtime runs on. The wrapper
# stops in one line, before the stage starts, on a node whose driver is older or has no GPU.
DRIVER_VARIABLE = "BRANCHFLOW_GPU_DRIVER"
SHARD_INDEX = "BRANCHFLOW_SHARD_INDEX"
SHARD_COUNT = "BRANCHFLOW_SHARD_COUNT"


class WrapperError(Exception):
    """A path, mount or output that is not where the stage needs it."""


def main(argv: list[str] | None = None) -> int:
    """Run the stage; return its exit status (1 for a bad path, input or output)."""
    args = _parser().parse_args(argv)
    root = Path.cwd().resolve()
    env = {**os.environ, "DVC_ROOT": str(root), "DVC_STAGE": args.stage}
    if env.get("PYTHONPATH"):  # relative entries name snapshot folders, whatever the wdir
        env["PYTHONPATH"] = _rooted(root, env["PYTHONPATH"])
    if env.get(TRACKING_VARIABLE):
        env["MLFLOW_TRACKING_URI"] = env["MLFLOW_REGISTRY_URI"] = env[TRACKING_VARIABLE]
    writes_outputs = os.environ.get("RANK", "0") == "0"
    _log(f"DVC stage {args.stage}, dvc_stage_hash {args.stage_hash}")
    try:
        if env.get(DRIVER_VARIABLE):
            _check_driver(env[DRIVER_VARIABLE])
        if args.shard:
            env.update(_shard(args.shard))
        wdir = _inside(root, args.wdir, "--wdir")
        mounts: dict[PurePosixPath, list[Path]] = {}
        for path, mount in args.inputs:
            mounts.setdefault(path, []).append(mount / path.name)
        for path, sources in mounts.items():
            target = _inside(root, path, "--in")
            if len(sources) == 1:
                _link(target, sources[0])
            else:
                _merge(target, sources)
        if writes_outputs:
            for path, _ in args.outputs:
                _remove(_inside(root, path, "--out"))
        for path, _ in args.outputs:  # the stage writes its outputs into existing folders
            _inside(root, path, "--out").parent.mkdir(parents=True, exist_ok=True)
        wdir.mkdir(parents=True, exist_ok=True)
        shell = os.environ.get("SHELL") or "/bin/sh"
        for command in args.commands:
            _log(f"> {command}")
            status = subprocess.run([shell, "-c", command], cwd=wdir, env=env).returncode
            if status:
                _log(f"the command failed with exit status {status}")
                return status
        if writes_outputs:
            for path, mount in args.outputs:
                _copy(_inside(root, path, "--out"), mount / path.name)
    except WrapperError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python branchflow_wrapper.py",
        description="Run a DVC stage's commands with Azure ML input and output folders.",
    )
    parser.add_argument("--stage", required=True, help="DVC stage name (for logs, DVC_STAGE)")
    parser.add_argument("--stage-hash", default="", help="the stage digest (for the logs)")
    parser.add_argument(
        "--wdir", type=PurePosixPath, default=PurePosixPath("."), help="the stage's wdir"
    )
    parser.add_argument("--shard", metavar="I/N", help="this node is shard I of N (from 0)")
    for flag, dest, what in (("--in", "inputs", "input"), ("--out", "outputs", "output")):
        parser.add_argument(
            flag,
            dest=dest,
            type=_pair,
            action="append",
            default=[],
            metavar="PATH=FOLDER",
            help=f"DVC path and the {what} folder that holds it under its own name",
        )
    parser.add_argument("commands", nargs="+", help="the stage's cmd, one shell command each")
    return parser


def _pair(text: str) -> tuple[PurePosixPath, Path]:
    """`PATH=FOLDER`, split at the last `=` (Azure ML folders have none)."""
    path, sep, folder = text.rpartition("=")
    relative = PurePosixPath(path)
    if not sep or not path or not folder or not relative.parts:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected PATH=FOLDER with PATH a file or folder below the repository root"
        )
    return relative, Path(folder).absolute()


def _rooted(root: Path, pythonpath: str) -> str:
    """`PYTHONPATH` with each relative entry made absolute from the snapshot root."""
    return os.pathsep.join(
        entry if not entry or os.path.isabs(entry) else str(root / entry)
        for entry in pythonpath.split(os.pathsep)
    )


def _check_driver(minimum: str) -> None:
    """The node's NVIDIA driver, from `nvidia-smi`, is `minimum` (a branch, e.g. 580) or later."""
    command = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
    try:
        found = subprocess.run(command, capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        found = []
    if not found:
        raise WrapperError(
            "this node runs on a GPU size, but nvidia-smi shows no GPU: the stage would fall "
            "back to the CPU or fail; check the cluster's VM size and its NVIDIA driver"
        )
    branch = found[0].split(".")[0]
    if not branch.isdigit() or int(branch) < int(minimum):
        raise WrapperError(
            f"the node's NVIDIA driver is {found[0]}, older than the {minimum} branch the "
            "environment's CUDA runtime needs; use a size or image with a newer driver, or lock "
            "a torch built for an older CUDA"
        )
    _log(f"NVIDIA driver {found[0]} (>= {minimum})")


def _shard(text: str) -> dict[str, str]:
    """The shard variables of `I/N`."""
    index, _, count = text.partition("/")
    if not (index.isdigit() and count.isdigit() and int(index) < int(count)):
        raise WrapperError(f"--shard {text}: expected I/N with 0 <= I < N")
    _log(f"shard {index} of {count}")
    return {SHARD_INDEX: index, SHARD_COUNT: count}


def _inside(root: Path, path: PurePosixPath, flag: str) -> Path:
    """`root/path`, refused unless it lies below `root` without passing a symbolic link."""
    if path.is_absolute() or ".." in path.parts:
        raise WrapperError(f"{flag} {path}: give a path below the snapshot root, relative")
    target = root.joinpath(*path.parts)
    walked = [*reversed(target.parents), *([target] if flag == "--wdir" else [])]
    for parent in walked:  # an input or output itself may be a link: it is replaced, not followed
        if parent.is_relative_to(root) and parent != root and parent.is_symlink():
            raise WrapperError(f"{flag} {path}: {parent.relative_to(root)} is a symbolic link")
    if target == root and flag != "--wdir":
        raise WrapperError(f"{flag} {path}: the snapshot root itself cannot be an input or output")
    return target


def _link(target: Path, source: Path) -> None:
    """Point `target` at `source` (replacing a stale copy); safe for concurrent processes."""
    if not source.exists():
        raise WrapperError(
            f"input folder {source.parent} has no {source.name}; it must hold the DVC path "
            "under its own name"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target, ignore_errors=True)
    temporary = _temporary(target, "link")
    temporary.symlink_to(source, target_is_directory=source.is_dir())
    os.replace(temporary, target)
    _log(f"{os.path.relpath(target)} -> {source}")


def _merge(target: Path, sources: list[Path]) -> None:
    """Make `target` a folder of links to the files of every source folder (the shards of one
    output); a file that several hold is taken from the first (shards write it alike). Built
    beside `target` and renamed into place, so processes of one node merging at once agree."""
    missing = [str(source) for source in sources if not source.exists()]
    if missing:
        raise WrapperError(f"input folders {', '.join(missing)} missing: each shard's must exist")
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or target.is_file():
        target.unlink()
    temporary = _temporary(target, "merge")
    for source in sources:
        if source.is_file():
            if not temporary.exists():
                temporary.symlink_to(source)
            continue
        for folder, _, names in os.walk(source):
            here = temporary / Path(folder).relative_to(source)
            here.mkdir(parents=True, exist_ok=True)
            for name in names:
                if not (here / name).is_symlink():
                    (here / name).symlink_to(Path(folder, name))
    try:
        os.rename(temporary, target)
    except OSError:  # another process of this node merged first
        _remove(temporary)
        if not target.exists():
            raise WrapperError(f"could not link the shards of {target}") from None
    _log(f"{os.path.relpath(target)} <- {len(sources)} shards")


def _remove(path: Path) -> None:
    """Delete an output before the run, as DVC does, so a stale one never passes for new; a
    symbolic link is removed itself, never what it points to."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _copy(source: Path, target: Path) -> None:
    """Copy file contents only (mounted storage need not accept modes or times)."""
    if not source.exists():
        raise WrapperError(f"the stage did not write {source}; check its cmd and outs")
    _remove(target)
    if source.is_file():
        _write(source, target)
    else:
        for folder, _, names in os.walk(source):  # symbolic links to folders are not followed
            here = target / Path(folder).relative_to(source)
            here.mkdir(parents=True, exist_ok=True)
            for name in sorted(names):
                _write(Path(folder, name), here / name)
    _log(f"{os.path.relpath(source)} -> {target}")


def _write(source: Path, target: Path) -> None:
    """Copy one file under a temporary name, then rename: readers never see half a file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary(target, "tmp")
    shutil.copyfile(source, temporary)
    os.replace(temporary, target)


def _temporary(target: Path, suffix: str) -> Path:
    """A name beside `target` that no other process, on this node or another writing to the
    same mount, picks: host, process and a random part."""
    unique = f"{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(4)}"
    return target.with_name(f".{target.name}.{unique}.{suffix}")


def _log(message: str) -> None:
    print(f"branchflow wrapper: {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
