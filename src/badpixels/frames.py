"""Stage `frames`: decode every video into a (T, H, W) uint8 array, one process per file.

python -m badpixels.frames data/raw/toy data/interim/manifest.json data/interim/frames
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from badpixels.stage import (
    atomic_output,
    load_params,
    parallel_map,
    param,
    read_json,
    reading,
    run,
    shard,
    usable_cores,
)
from badpixels.video import read_video


@dataclass(frozen=True)
class FramesParams:
    workers: int = param(usable_cores, at_least=1)


def decode(job: tuple[Path, Path]) -> None:
    """Decode one video file into one .npy file."""
    video, target = job
    np.save(target, read_video(video))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m badpixels.frames", description=__doc__)
    parser.add_argument("raw", type=Path, help="raw data folder (videos/)")
    parser.add_argument("manifest", type=Path, help="manifest written by `validate`")
    parser.add_argument("out", type=Path, help="folder of .npy frame stacks to write")
    args = parser.parse_args(argv)
    params = load_params(FramesParams, "frames")
    with reading(args.manifest, "validate"):
        videos = [(v["file"], v["id"]) for v in read_json(args.manifest, "validate")["videos"]]
    with atomic_output(args.out) as tmp:
        tmp.mkdir()
        jobs = [(args.raw / "videos" / file, tmp / f"{stem}.npy") for file, stem in videos]
        parallel_map(decode, shard(jobs), params.workers, desc="frames")


if __name__ == "__main__":
    run(main)
