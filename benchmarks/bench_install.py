"""Install time (cold: an empty uv cache; warm: the cache filled) and installed size, from uv.lock.

    python benchmarks/bench_install.py                   # HEAD: toolkit, example, test command
    python benchmarks/bench_install.py --before 957354f  # the same installs at that commit too

Each install goes into a new virtualenv beside a fresh clone. Cold installs download from the
package index, so they measure this machine's network too. The toolkit is also installed
alone from its wheel into a new virtualenv with the pip Python ships (cold: pip's cache off)
and with uv, as a user of the released package would.
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


def bench_lock(work: Path, ref: str) -> None:
    clone = work / f"clone-{ref}"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    subprocess.run(["git", "checkout", "-q", ref], cwd=clone, check=True)
    cache = work / "uv-cache"
    print(f"{'install at ' + ref:<32} {'cold s':>8} {'warm s':>8} {'size MiB':>9}")
    for name, flags in SCENARIOS.items():
        figures = []
        for run in ("cold", "warm"):
            venv = work / f"venv-{ref}-{len(figures)}-{name.split()[0]}"
            env = {**os.environ, "UV_CACHE_DIR": str(cache), "UV_PROJECT_ENVIRONMENT": str(venv)}
            if run == "cold":
                subprocess.run([uv(), "cache", "clean"], env=env, check=True, capture_output=True)
            figures.append(timed([uv(), "sync", "--locked", "-q", *flags], clone, env))
        print(f"{name:<32} {figures[0]:8.1f} {figures[1]:8.1f} {size_mib(venv):9.0f}")


def bench_wheel(work: Path) -> None:
    """The toolkit's wheel with its extras, alone: pip 23.2.1 (as Python ships it) and uv."""
    dist = work / "dist"
    subprocess.run([uv(), "build", "-q", "--package", "branchflow", "--wheel", "-o", str(dist)],
                   cwd=ROOT, check=True)  # fmt: skip
    (wheel,) = dist.glob("branchflow-*.whl")
    requirement = f"{wheel}[report,azure]"
    print(f"{'toolkit wheel alone':<32} {'cold s':>8} {'warm s':>8} {'size MiB':>9}")
    for tool in ("pip", "uv"):
        figures, venv = [], work / "none"
        for run in ("cold", "warm"):
            venv = work / f"venv-wheel-{tool}-{run}"
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            env = {**os.environ, "UV_CACHE_DIR": str(work / "uv-wheel-cache")}
            if tool == "pip":
                env["PIP_CACHE_DIR"] = str(work / "pip-cache")
                env["PIP_CONFIG_FILE"] = os.devnull  # PyPI only, as on a laptop
                command = [str(venv / "bin/pip"), "install", "-q", requirement]
            else:
                command = [uv(), "pip", "install", "-q", "--python", str(venv / "bin/python")]
                command.append(requirement)
            figures.append(timed(command, work, env))
        print(f"{tool:<32} {figures[0]:8.1f} {figures[1]:8.1f} {size_mib(venv):9.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", metavar="REF", help="also time the installs at REF")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        for ref in ["HEAD", *([args.before] if args.before else [])]:
            bench_lock(Path(scratch), ref)
        bench_wheel(Path(scratch))


if __name__ == "__main__":
    main()
