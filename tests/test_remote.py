"""The README's Azure Blob remote, against Azurite: push the toy set, pull it in a fresh clone."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient

from tests.conftest import ROOT, free_port, sh

AZURITE = ROOT / "tests" / "tools" / "node_modules" / ".bin" / "azurite-blob"
# Azurite's well-known development account (public, documented, emulator only).
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


def connection_string(port: int) -> str:
    return (
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
        f"AccountKey={ACCOUNT_KEY};BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;"
    )


@pytest.fixture
def azurite() -> Iterator[int]:
    """A real Azure Blob endpoint on loopback; yields its port."""
    assert AZURITE.exists(), "run `npm ci --prefix tests/tools` (see README)"
    port = free_port()
    args = [AZURITE, "--blobHost", "127.0.0.1", "--blobPort", str(port), "--inMemoryPersistence"]
    process = subprocess.Popen(
        [str(a) for a in [*args, "--skipApiVersionCheck"]],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.2)
    BlobServiceClient.from_connection_string(connection_string(port)).create_container("branchflow")
    yield port
    process.kill()
    process.wait()


def add_azure_remote(repo: Path, port: int) -> None:
    sh("dvc", "remote", "add", "azure", "azure://branchflow/toy", cwd=repo)
    sh(
        "dvc",
        "remote",
        "modify",
        "--local",
        "azure",
        "connection_string",
        connection_string(port),
        cwd=repo,
    )


@pytest.mark.e2e
def test_toy_set_round_trips_through_azure_blob(
    project_repo: Path, azurite: int, tmp_path: Path
) -> None:
    source = tmp_path / "source"
    sh("git", "clone", "-q", project_repo, source, cwd=tmp_path)
    sh("dvc", "pull", "-q", "data.dvc", cwd=source)
    add_azure_remote(source, azurite)
    sh("dvc", "push", "-q", "-r", "azure", "data.dvc", cwd=source)

    clone = tmp_path / "clone"
    sh("git", "clone", "-q", project_repo, clone, cwd=tmp_path)
    add_azure_remote(clone, azurite)
    sh("dvc", "pull", "-q", "-r", "azure", "data.dvc", cwd=clone)
    assert sh("dvc", "status", "data.dvc", cwd=clone).stdout.strip() == (
        "Data and pipelines are up to date."
    )
    videos = sorted(p.name for p in (clone / "data/raw/toy/videos").iterdir())
    assert len(videos) == 64
