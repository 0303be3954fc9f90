"""How long `branchflow report` takes on a reproduced project, and how much of it is imports.

    python benchmarks/bench_report.py [--project .] [--base HEAD] [--repeat 3]

Run it in a checkout after `dvc pull data.dvc && dvc repro`. The report goes to a temporary
folder; the project is only read (DVC may write its own `.dvc/tmp`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, default=Path.cwd())
    parser.add_argument("--base", default="HEAD", help="git ref to compare with")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    root = args.project.resolve()

    started = time.perf_counter()
    import dvc.repo  # noqa: F401
    import vl_convert  # noqa: F401

    from branchflow.report.document import write_report

    imports = time.perf_counter() - started

    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "report.md"
        warm = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            write_report(root, out, args.base, env=os.environ)
            warm.append(time.perf_counter() - started)
        images = len(list(out.parent.glob("report_files/*.png")))
        # The console script itself: a version manager's shim (pyenv) would add its own time.
        executable = Path(sys.executable).with_name("branchflow")
        command = [str(executable), "report", "--base", args.base, "--out", str(out)]
        started = time.perf_counter()
        subprocess.run(command, cwd=root, check=True, capture_output=True)
        cold = time.perf_counter() - started

    print(f"project: {root} vs {args.base}; {images} PNGs, {out.name} written")
    print(f"imports (dvc, vl_convert, branchflow.report.document): {imports:.2f} s")
    runs = ", ".join(f"{seconds:.2f}" for seconds in warm)
    print(f"write_report, imports done: median {statistics.median(warm):.2f} s ({runs})")
    print(f"`branchflow report` end to end (new process): {cold:.2f} s")


if __name__ == "__main__":
    main()
