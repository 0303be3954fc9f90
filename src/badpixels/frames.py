"""Stage `frames`: decode every video into a (T, H, W) uint8 array, one process per file.

python -m badpixels.frames data/raw/toy data/interim/manifest.json data/interim/frames
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from badpixels.stage import atomic_output, load_params, parallel_map, run
from badpixels.video import read_video


@dataclass(frozen=True)
class FramesParams:
    workers: int


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
    videos = json.loads(args.manifest.read_text())["videos"]
    with atomic_output(args.out) as tmp:
        tmp.mkdir()
        jobs = [(args.raw / "videos" / v["file"], tmp / f"{v['id']}.npy") for v in videos]
        parallel_map(decode, jobs, params.workers, desc="frames")


if __name__ == "__main__":
    run(main)
