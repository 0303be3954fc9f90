"""Install time (cold: an empty uv cache; warm: the cache filled) and installed size, from uv.lock.

    python benchmarks/bench_install.py            # toolkit alone, the example, the test command
    python benchmarks/bench_install.py --before 8258d20   # also `pip install -e .` at that commit

Each install goes into a new virtualenv beside a fresh clone of HEAD. Cold installs download
from the package index, so they measure this machine's network too. The `--before` figure is
the pre-lock install (pip, ranges, no lock), timed cold with pip's cache turned off.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = {
    "toolkit alone": ["--package", "branchflow", "--no-default-groups"],
    "example (main job)": ["--no-dev"],
    "test command": ["--compile-bytecode"],
}


def uv() -> str:
    from uv import find_uv_bin

    return find_uv_bin()


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=cwd, env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def size_mib(venv: Path) -> float:
    files = (p for p in venv.rglob("*") if p.is_file() and not p.is_symlink())
    return sum(p.stat().st_size for p in files) / 2**20


def bench_lock(work: Path) -> None:
    clone = work / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    cache = work / "uv-cache"
    print(f"{'install':<20} {'cold s':>8} {'warm s':>8} {'size MiB':>9}")
    for name, flags in SCENARIOS.items():
        figures = []
        for run in ("cold", "warm"):
            venv = work / f"venv-{len(figures)}-{name.split()[0]}"
            env = {**os.environ, "UV_CACHE_DIR": str(cache), "UV_PROJECT_ENVIRONMENT": str(venv)}
            if run == "cold":
                subprocess.run([uv(), "cache", "clean"], env=env, check=True, capture_output=True)
            figures.append(timed([uv(), "sync", "--locked", "-q", *flags], clone, env))
        print(f"{name:<20} {figures[0]:8.1f} {figures[1]:8.1f} {size_mib(venv):9.0f}")


def bench_before(work: Path, ref: str) -> None:
    old = work / "before"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(old)], check=True)
    subprocess.run(["git", "checkout", "-q", ref], cwd=old, check=True)
    venv = work / "venv-before"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {**os.environ, "PIP_NO_CACHE_DIR": "1"}
    seconds = timed([str(venv / "bin/pip"), "install", "-q", "-e", "."], old, env)
    print(f"{'before: pip -e .':<20} {seconds:8.1f} {'':>8} {size_mib(venv):9.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", metavar="REF", help="also time `pip install -e .` at REF")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        bench_lock(Path(scratch))
        if args.before:
            bench_before(Path(scratch), args.before)


if __name__ == "__main__":
    main()
