"""What the server benchmarks share: a free loopback port, and a server process held while it
answers its health check."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running(
    what: str, command: Sequence[str], env: Mapping[str, str], health: str, log: Path | None = None
) -> Iterator[None]:
    """The server `what`, started as `command` in its own session (output to `log`, else
    dropped), once GET `health` answers 200 (within 120 s); stopped with its children when the
    block ends."""
    with open(log or os.devnull, "wb") as out:
        server = subprocess.Popen(command, env=env, stdout=out, stderr=out, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not answers(health):
            if server.poll() is not None or time.monotonic() > deadline:
                where = f"; see {log}" if log else ""
                raise SystemExit(f"{what} did not start{where}")
            time.sleep(0.2)
        yield
    finally:
        with suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def answers(url: str) -> bool:
    """Whether a GET of `url` answers 200 now."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False
