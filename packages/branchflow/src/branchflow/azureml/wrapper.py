"""The stage wrapper: run one DVC stage's own commands on Azure ML, as `dvc repro` runs them.

    python -m branchflow.azureml.wrapper --stage train --stage-hash HASH \\
        --in data/processed/features=/mnt/in --out models/model.pt=/mnt/out \\
        -- 'python -m badpixels.train data/processed/features models/model.pt'

From the repository root of the code snapshot (the working directory) it links each input
path to `<mount>/<its name>`, removes stale outputs, runs each command with `$SHELL -c` (as
DVC does, with `DVC_ROOT` and `DVC_STAGE` set), then copies each output to
`<mount>/<its name>`. Under a distributed launch (`RANK` set) every process links the inputs,
atomically, and only rank 0 touches the outputs.

Standard library only: it runs in any environment that has Python.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath


class WrapperError(Exception):
    """A mount or output that is not where the stage needs it."""


def main(argv: list[str] | None = None) -> int:
    """Run the stage; return its exit status (1 for a missing input or output)."""
    args = _parser().parse_args(argv)
    root = Path.cwd()
    primary = os.environ.get("RANK", "0") == "0"
    _log(f"DVC stage {args.stage}, dvc_stage_hash {args.stage_hash}")
    try:
        for path, mount in args.inputs:
            _link(root / path, mount / path.name)
        if primary:
            for path, _ in args.outputs:
                _remove(root / path)
        env = {**os.environ, "DVC_ROOT": str(root), "DVC_STAGE": args.stage}
        shell = os.environ.get("SHELL") or "/bin/sh"
        for command in args.commands:
            _log(f"> {command}")
            status = subprocess.run([shell, "-c", command], cwd=root, env=env).returncode
            if status:
                _log(f"the command failed with exit status {status}")
                return status
        if primary:
            for path, mount in args.outputs:
                _copy(root / path, mount / path.name)
    except WrapperError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m branchflow.azureml.wrapper",
        description="Run a DVC stage's commands with Azure ML input and output folders.",
    )
    parser.add_argument("--stage", required=True, help="DVC stage name (for logs, DVC_STAGE)")
    parser.add_argument("--stage-hash", default="", help="the stage digest (for the logs)")
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
    if not sep or not path or not folder or relative.is_absolute() or ".." in relative.parts:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected PATH=FOLDER with PATH relative to the repository root"
        )
    return relative, Path(folder).absolute()


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
    temporary = target.with_name(f".{target.name}.{os.getpid()}.link")
    temporary.symlink_to(source, target_is_directory=source.is_dir())
    os.replace(temporary, target)
    _log(f"{target.relative_to(Path.cwd())} -> {source}")


def _remove(path: Path) -> None:
    """Delete an output before the run, as DVC does, so a stale one never passes for new."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _copy(source: Path, target: Path) -> None:
    """Copy file contents only: mounted storage need not accept modes or times."""
    if not source.exists():
        raise WrapperError(f"the stage did not write {source}; check its cmd and outs")
    _remove(target)
    if source.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    else:
        for item in sorted(source.rglob("*")):
            destination = target / item.relative_to(source)
            if item.is_dir():
                destination.mkdir(parents=True, exist_ok=True)
            else:
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(item, destination)
        target.mkdir(parents=True, exist_ok=True)
    _log(f"{source.relative_to(Path.cwd())} -> {target}")


def _log(message: str) -> None:
    print(f"branchflow wrapper: {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
