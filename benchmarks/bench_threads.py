"""Stage `train` at 1, 2 and 4 intra-op threads: wall and CPU seconds, and the model's sha256.

    python benchmarks/bench_threads.py [--project .] [--epochs N] [--unpinned]

Runs `python -m badpixels.train data/processed/features` in `--project` (a checkout whose
`dvc repro features` has run) with OMP_NUM_THREADS set, writing the models to a temporary folder.
`--unpinned` lifts train()'s fixed thread count, to show what it costs and what it buys.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STAGE = """
import contextlib, dataclasses
import badpixels.train as train
if {unpinned}:
    train.intra_op_threads = lambda count: contextlib.nullcontext()
if {epochs}:
    load = train.load_params
    train.load_params = lambda *a: dataclasses.replace(load(*a), epochs={epochs})
train.run(train.main)
"""


def timed(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of one command."""
    start = time.perf_counter()
    process = subprocess.Popen(args, cwd=cwd, env=env, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(args)}")
    return elapsed, usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--project", type=Path, default=Path.cwd())
    parser.add_argument("--epochs", type=int, default=0, help="override train.epochs (0: keep)")
    parser.add_argument("--unpinned", action="store_true", help="lift the fixed thread count")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    features = args.project / "data/processed/features"
    if not (features / "train").is_dir():
        sys.exit(f"{features}: missing; run `dvc repro features` in {args.project} first")
    code = STAGE.format(unpinned=args.unpinned, epochs=args.epochs)
    label = "unpinned" if args.unpinned else "pinned"
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        for threads in args.threads:
            model = Path(tmp) / str(threads) / "model.pt"  # one name: torch.save records it
            env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TQDM_DISABLE": "1"}
            command = [sys.executable, "-c", code, str(features), str(model)]
            wall, cpu = timed(command, args.project, env)
            digest = hashlib.sha256(model.read_bytes()).hexdigest()[:16]
            run = f"{wall:5.1f} s wall, {cpu:5.1f} s CPU"
            print(f"{label} OMP_NUM_THREADS={threads}: {run}, model {digest}")


if __name__ == "__main__":
    main()
