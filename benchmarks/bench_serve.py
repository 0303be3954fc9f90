"""Latency and throughput of the champion behind a real `mlflow models serve`.

Run it from a project whose registry holds a champion (after `branchflow register` and
`branchflow promote`; MLFLOW_TRACKING_URI, else the project's mlflow.db). It serves
`models:/<model>@champion` on a free port, posts one 24-frame 64x64 toy stack (MLflow's
`{"inputs": ...}` protocol) `--requests` times in a row after a warm-up, and stops the server.

    python benchmarks/bench_serve.py [--model badpixels_production] [--requests 50]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from badpixels.synth import SCALES, make_video
from servers import free_port, running


@contextmanager
def served(model: str) -> Iterator[str]:
    """`mlflow models serve` of `model@champion` on a free port; its URL while the block runs."""
    port = free_port()
    command = ["mlflow", "models", "serve", "-m", f"models:/{model}@champion"]
    command += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    with running(f"mlflow models serve of {model}@champion", command, env, f"{url}/ping"):
        yield url


def post(url: str, body: bytes) -> float:
    """Seconds for one `/invocations` request with `body`."""
    request = urllib.request.Request(
        f"{url}/invocations", data=body, headers={"Content-Type": "application/json"}
    )
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as response:
        response.read()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="badpixels_production", help="the production model")
    parser.add_argument("--requests", type=int, default=50)
    args = parser.parse_args()
    frames, _ = make_video(0, SCALES["toy"], seed=1)  # 24 frames of 64x64
    body = json.dumps({"inputs": frames.tolist()}).encode()
    with served(args.model) as url:
        for _ in range(3):
            post(url, body)  # warm-up: the first calls load and trace the model
        times = sorted(post(url, body) for _ in range(args.requests))
    p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
    print(f"stack {frames.shape} uint8, request body {len(body) / 1e3:.0f} kB")
    print(f"latency median {statistics.median(times) * 1e3:.1f} ms, p95 {p95 * 1e3:.1f} ms")
    print(f"throughput {len(times) / sum(times):.1f} requests/s (one client, sequential)")


if __name__ == "__main__":
    main()
