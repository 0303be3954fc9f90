"""Lossless grey-scale video files: FFV1 in Matroska, so single-pixel defects survive."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from badpixels.stage import StageError

CODEC = "ffv1"
CONTAINER = "matroska"
BITEXACT = {"fflags": "+bitexact"}  # no random segment ids or dates: same frames, same bytes


def write_video(path: Path, frames: np.ndarray, fps: int = 25) -> None:
    """Write a (T, H, W) uint8 stack as a bit-exact FFV1/Matroska file."""
    _, height, width = frames.shape
    with av.open(str(path), "w", format=CONTAINER, options=BITEXACT) as container:
        stream = container.add_stream(CODEC, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "gray"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="gray")))
        container.mux(stream.encode())


def read_video(path: Path) -> np.ndarray:
    """Decode every frame of `path` into a (T, H, W) uint8 stack."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise StageError(f"{path}: has no video stream; replace it or run `dvc pull`")
            stream = container.streams.video[0]
            stream.thread_count = 1  # parallelism is one process per file; more oversubscribes
            stack = [f.to_ndarray(format="gray") for f in container.decode(stream)]
    except av.FFmpegError as exc:
        raise StageError(
            f"{path}: not a readable video ({exc.strerror or type(exc).__name__}); "
            "replace it or restore it with `dvc pull`"
        ) from None
    if not stack:
        raise StageError(f"{path}: no frames could be decoded; replace it or run `dvc pull`")
    return np.stack(stack)
