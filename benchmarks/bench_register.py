"""Wall time of `branchflow --help`, `branchflow context` and `branchflow register`.

Run it from a reproduced project (after `dvc pull data.dvc && dvc repro`). It starts a
throwaway `mlflow server` (sqlite, local artifacts) on a free port, registers against it and
stops it; the project's own MLflow store is not touched.

    python benchmarks/bench_register.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from servers import free_port, running


@contextmanager
def mlflow_server(home: Path) -> Iterator[str]:
    """A local `mlflow server` on a free port; its URI while the block runs."""
    port = free_port()
    command = ["mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    command += ["--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}"]
    command += ["--artifacts-destination", str(home / "artifacts")]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    uri = f"http://127.0.0.1:{port}"
    with running("mlflow server", command, env, f"{uri}/health", home / "server.log"):
        yield uri


def timed(command: list[str], env: dict[str, str]) -> float:
    """Seconds `command` took; it must succeed."""
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per command")
    n = parser.parse_args().repeat
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    with tempfile.TemporaryDirectory() as home, mlflow_server(Path(home)) as uri:
        env["MLFLOW_TRACKING_URI"] = uri
        again = {**env, "BRANCHFLOW_BRANCH": "bench-0"}
        runs = {
            "branchflow --help": [timed(["branchflow", "--help"], env) for _ in range(n)],
            "branchflow context": [timed(["branchflow", "context"], env) for _ in range(n)],
            # a new branch each time: a run, a logged model and a version
            "branchflow register (new version)": [
                timed(["branchflow", "register"], {**env, "BRANCHFLOW_BRANCH": f"bench-{i}"})
                for i in range(n)
            ],
            # the same bytes again: a lookup by model_sha256, nothing registered
            "branchflow register (already registered)": [
                timed(["branchflow", "register"], again) for _ in range(n)
            ],
        }
    print(f"{'command':<42} {'median s':>9} {'min s':>7}  (n={n}, cores={os.cpu_count()})")
    for name, seconds in runs.items():
        print(f"{name:<42} {statistics.median(seconds):>9.2f} {min(seconds):>7.2f}")


if __name__ == "__main__":
    main()
