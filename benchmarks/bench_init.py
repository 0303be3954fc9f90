"""How long `branchflow init --check` (what pr.yml runs) takes, and the CLI's start-up.

    python benchmarks/bench_init.py [--project .] [--repeat 3]

It only reads the project: `plan` renders every generated file in memory.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, default=Path.cwd())
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    root = args.project.resolve()
    # The console script itself: a version manager's shim (pyenv) would add its own time.
    executable = str(Path(sys.executable).with_name("branchflow"))
    help_runs = [_seconds([executable, "--help"], root) for _ in range(args.repeat)]
    check_runs = [_seconds([executable, "init", "--check"], root) for _ in range(args.repeat)]

    from branchflow.ci.init import plan

    warm = []
    for _ in range(args.repeat):
        started = time.perf_counter()
        planned = plan(root)
        warm.append(time.perf_counter() - started)

    print(f"project: {root}; {len(planned.files)} files planned")
    print(f"`branchflow --help` (start-up): median {statistics.median(help_runs):.2f} s")
    print(f"`branchflow init --check` (new process): median {statistics.median(check_runs):.2f} s")
    print(f"plan(), imports done: median {statistics.median(warm):.2f} s")


def _seconds(command: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
