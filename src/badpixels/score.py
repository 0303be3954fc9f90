"""Stage `score`: map the defects of a batch of new videos with the pinned production model.

The pin (`{name, version, sha256}`, written by `branchflow pin`) names one registered version;
its artifact must have the pinned sha256. Each worker decodes one video at a time and writes
its class map. Run as several shards (`badpixels.stage.shard`), each maps its share of the
videos into the same folder; stage `summarize` then reads every map.

    python -m badpixels.score pipelines/scoring/model.json data/batches/toy data/scoring/maps
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import importlib.util
import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from badpixels.stage import (
    StageError,
    atomic_output,
    load_params,
    parallel_map,
    param,
    read_text,
    run,
    shard,
    usable_cores,
)
from badpixels.video import read_video

LOCAL_STORE = "mlflow.db"  # the project's registry without MLFLOW_TRACKING_URI (branchflow's)
ARTIFACT = "model"  # the pyfunc's artifact holding the weights (see serve.py)
SHA256 = re.compile(r"[0-9a-f]{64}")
# Fail fast on an unreachable server (MLflow's defaults retry for minutes); no progress bar.
MLFLOW_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


@dataclasses.dataclass(frozen=True)
class ScoreParams:
    workers: int = param(usable_cores, at_least=1)


@dataclasses.dataclass(frozen=True)
class Pin:
    """One registered model version and the sha256 of its artifact."""

    name: str
    version: str
    sha256: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def read_pin(path: Path) -> Pin:
    """The pin at `path`; a malformed one is a StageError."""
    fix = f"write it with `branchflow pin --out {path}`"
    try:
        document = json.loads(read_text(path, fix))
    except json.JSONDecodeError:
        document = None
    fields = document if isinstance(document, dict) else {}
    name, version, sha = (str(fields.get(key, "")) for key in ("name", "version", "sha256"))
    if not (name and version.isdecimal() and SHA256.fullmatch(sha)):
        raise StageError(
            f"{path}: needs name, version (a number) and sha256 (64 hex digits); {fix}"
        )
    return Pin(name, version, sha)


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI`, else the project's local store (which must exist)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri and uri.startswith("azureml:") and not _has_azureml_plugin():
        raise StageError(
            f"MLFLOW_TRACKING_URI is an Azure ML workspace ({uri.split('/subscriptions')[0]}), "
            "which MLflow reads only with the azureml-mlflow plugin, not installed here; point "
            "it at the registry that holds the pinned model (on Azure ML nodes: "
            "[tool.branchflow.azureml] mlflow_tracking_uri)"
        )
    if uri:
        return uri
    store = Path.cwd().resolve() / LOCAL_STORE
    if not store.is_file():
        raise StageError(
            f"{store}: no local registry; set MLFLOW_TRACKING_URI to the registry, or run "
            "`branchflow register` and `branchflow promote` here first"
        )
    return f"sqlite:///{store}"


def _has_azureml_plugin() -> bool:
    try:
        return importlib.util.find_spec("azureml.mlflow") is not None
    except ModuleNotFoundError:  # no `azureml` package at all
        return False


def download(pin: Pin, pin_path: Path, dest: Path) -> Path:
    """Download the pinned version into `dest`, checked against the pin's sha256."""
    for key, value in MLFLOW_DEFAULTS.items():
        os.environ.setdefault(key, value)
    import mlflow
    from mlflow.exceptions import MlflowException

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=pin.uri, dst_path=str(dest)))
        weights = local / artifact_path(local)
        sha = file_sha256(weights)
    except (MlflowException, OSError, KeyError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise StageError(
            f"{pin_path}: the registry at {uri} cannot give {pin.uri} ({reason}); "
            f"set MLFLOW_TRACKING_URI to the registry that holds it, or re-pin with "
            f"`branchflow pin --out {pin_path}`"
        ) from None
    if sha != pin.sha256:
        raise StageError(
            f"{pin_path}: {pin.uri} has sha256 {sha[:12]}..., the pin says {pin.sha256[:12]}...; "
            f"not the pinned bytes: re-pin with `branchflow pin --out {pin_path}`"
        )
    return local


def artifact_path(model: Path) -> str:
    """Where the downloaded pyfunc at `model` keeps its weights, from its MLmodel file."""
    from mlflow.models import Model

    return Model.load(str(model)).flavors["python_function"]["artifacts"][ARTIFACT]["path"]


def file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


@functools.cache
def load(model: str) -> Any:
    """The pyfunc at the local path `model`, loaded once per worker process."""
    import mlflow

    return mlflow.pyfunc.load_model(model)


def score_video(job: tuple[str, Path, Path]) -> None:
    """Write the class map of one video."""
    model, video, target = job
    np.save(target, np.asarray(load(model).predict(read_video(video)), dtype=np.int64))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m badpixels.score", description=__doc__)
    parser.add_argument("pin", type=Path, help="the model pin (`branchflow pin` writes it)")
    parser.add_argument("batch", type=Path, help="batch folder (videos/, labels.csv)")
    parser.add_argument("maps", type=Path, help="folder of .npy class maps to write")
    args = parser.parse_args(argv)
    params = load_params(ScoreParams, "score")
    pin = read_pin(args.pin)
    videos = sorted((args.batch / "videos").glob("*.mkv"))
    if not videos:
        raise StageError(f"{args.batch}/videos: no .mkv videos; run `dvc pull {args.batch}.dvc`")
    with tempfile.TemporaryDirectory() as tmp, atomic_output(args.maps) as out:
        model = str(download(pin, args.pin, Path(tmp)))
        out.mkdir()
        jobs = [(model, video, out / f"{video.stem}.npy") for video in videos]
        parallel_map(score_video, shard(jobs), params.workers, desc="score")


if __name__ == "__main__":
    run(main)
