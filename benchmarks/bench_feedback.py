"""Time to PR feedback: the generated PR build against a remote that a main build filled.

    python benchmarks/bench_feedback.py

In temporary folders: this repository's HEAD with a shared default remote (an `s3://` URL, so
`branchflow init` generates the builds a team with cloud storage gets; each clone points it at
a local folder in its own `.dvc/config.local`), its toy data pushed there, and main.yml's
training job run on it (repro, `dvc push --run-cache`). Then fresh clones run pr-training.yml's
steps for two PRs: one that changes only `evaluate.py`, one that changes a training param; and,
for comparison, the evaluate PR built as before (`dvc pull` of the data, then `dvc repro`).
Prints each build's seconds, the stages that ran and the bytes it downloaded, and a full
`dvc pull`'s bytes. One line a figure.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from bench_pipeline import set_param

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}


def sh(*args: str, cwd: Path) -> str:
    done = subprocess.run(args, cwd=cwd, env=ENV, check=True, capture_output=True, text=True)
    return done.stdout + done.stderr


def steps(repo: Path, workflow: str, job: str) -> dict[str, str]:
    """The `run:` scripts of a generated job, by step name."""
    document = yaml.safe_load((repo / ".github" / "workflows" / workflow).read_text())
    found = document["jobs"][job]["steps"]
    return {step.get("name", step.get("run", "")): step["run"] for step in found if "run" in step}


def bash(script: str, cwd: Path) -> tuple[float, str]:
    start = time.perf_counter()
    output = sh("bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script, cwd=cwd)
    return time.perf_counter() - start, output


def cache_bytes(repo: Path, remote: Path | None = None) -> int:
    """The bytes of `repo`'s DVC cache; with `remote`, of the objects the remote also holds
    (what a build that pushes nothing downloaded, but for outputs it rebuilt byte for byte)."""
    cache = repo / ".dvc" / "cache" / "files"
    files = [path for path in cache.rglob("*") if path.is_file()]
    if remote is not None:
        files = [path for path in files if (remote / "files" / path.relative_to(cache)).exists()]
    return sum(path.stat().st_size for path in files)


def ran(output: str) -> str:
    return ", ".join(re.findall(r"Running stage '([^']+)'", output)) or "none"


def storage(repo: Path, work: Path) -> None:
    """Point the shared remote of `repo` at the benchmark's folder, in its config.local."""
    sh("dvc", "remote", "modify", "-q", "--local", "shared", "url", str(work / "remote"), cwd=repo)


def clone(repo: Path, work: Path, name: str) -> Path:
    folder = work / name
    sh("git", "clone", "-q", str(repo), str(folder), cwd=work)
    storage(folder, work)
    return folder


def origin(work: Path) -> Path:
    """HEAD with a shared default remote, init's builds for it, and main's build pushed."""
    repo = work / "origin"
    sh("git", "clone", "-q", str(ROOT), str(repo), cwd=work)
    sh("dvc", "pull", "-q", "data.dvc", cwd=repo)  # from the in-repo toy remote
    sh("dvc", "remote", "add", "-q", "-d", "shared", "s3://team-bucket/badpixels", cwd=repo)
    storage(repo, work)
    sh("dvc", "push", "-q", "data.dvc", cwd=repo)
    sh("branchflow", "init", cwd=repo)
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-q", "-m", "a shared remote", cwd=repo)
    main = clone(repo, work, "main-build")
    job = steps(main, "main.yml", "training")
    seconds = 0.0
    for name in ("Pull the data", "Reproduce the pipeline", "Push the outputs and the run-cache"):
        elapsed, _ = bash(job[name], main)
        seconds += elapsed
    print(f"main build (pull, repro, push --run-cache): {seconds:.1f} s")
    return repo


def pull_request(
    work: Path, repo: Path, name: str, change: Callable[[Path], None], old: bool = False
) -> float:
    folder = clone(repo, work, name)
    change(folder)
    job = steps(folder, "pr-training.yml", "pipeline")
    if old:  # the steps PR builds had: the data, then the whole pipeline
        pulled, _ = bash("dvc pull data.dvc", folder)
        mib = cache_bytes(folder) / 2**20
        built, output = bash("dvc repro", folder)
        seconds = pulled + built
    else:
        seconds, output = bash(job["Reproduce what changed"], folder)
        mib = cache_bytes(folder, work / "remote") / 2**20
    fallback = " (fell back to a full build)" if "::warning" in output else ""
    print(f"{name}: {seconds:.1f} s, ran {ran(output)}, downloaded {mib:.1f} MiB{fallback}")
    return seconds


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        repo = origin(work)

        def evaluate_only(clone: Path) -> None:
            with (clone / "src" / "badpixels" / "evaluate.py").open("a") as source:
                source.write("# a reviewer's suggestion\n")

        before = pull_request(work, repo, "evaluate.py PR, as before", evaluate_only, old=True)
        after = pull_request(work, repo, "evaluate.py PR", evaluate_only)
        print(f"evaluate.py PR: {before / after:.1f}x faster (target >= 3x)")
        pull_request(work, repo, "train.epochs PR", lambda c: set_param(c, "train.epochs", 6))
        full = clone(repo, work, "full")
        sh("dvc", "pull", "-q", "data.dvc", "dvc.yaml", cwd=full)
        print(f"a full dvc pull of the training pipeline: {cache_bytes(full) / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
