"""Stage `features`: candidate pixels and their spatio-temporal patches, one video at a time.

A pixel is a candidate when it never changes (dead, stuck) or when it strays far from the
median of its 3x3 neighbourhood in some frame (hot, flickering). Each candidate keeps the
raw (T, P, P) patch around it; videos are split into train and test sets, never pixels.

    python -m badpixels.features data/interim/frames data/raw/toy/labels.csv \
        data/processed/features
"""

from __future__ import annotations

import argparse
import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import ndimage

from badpixels.stage import (
    StageError,
    atomic_output,
    load_params,
    parallel_map,
    param,
    read_json,
    reading,
    run,
    shard,
    usable_cores,
    write_json,
)
from badpixels.synth import KINDS, Label, read_labels

CLASSES = ("normal", *KINDS)
RULE_FILE = "rule.json"


@dataclass(frozen=True)
class FeaturesParams:
    patch: int = param(at_least=3, odd=True)  # and at most a quarter of the frame: see main
    residual_threshold: float = param(at_least=0, at_most=255)  # grey levels
    still_threshold: float = param(above=0, at_most=255)  # a std below 0 never happens
    test_fraction: float = param(above=0, below=1)
    seed: int = param(at_least=0, below=2**32)
    workers: int = param(usable_cores, at_least=1)


@dataclass(frozen=True)
class CandidateRule:
    """The preprocessing a trained model depends on; saved next to its weights."""

    patch: int
    residual_threshold: float
    still_threshold: float


def find_candidates(frames: np.ndarray, rule: CandidateRule) -> tuple[np.ndarray, np.ndarray]:
    """(ys, xs) of pixels that are still or stray from their neighbourhood median."""
    stack = frames.astype(np.float32)
    residual = stack - ndimage.median_filter(stack, size=(1, 3, 3), mode="reflect")
    still = stack.std(axis=0) < rule.still_threshold
    stray = np.abs(residual).max(axis=0) > rule.residual_threshold
    return np.nonzero(still | stray)


def extract_patches(frames: np.ndarray, ys: np.ndarray, xs: np.ndarray, patch: int) -> np.ndarray:
    """(N, T, P, P) raw patches centred on each (y, x), edges reflected."""
    half = patch // 2
    padded = np.pad(frames, ((0, 0), (half, half), (half, half)), mode="reflect")
    windows = sliding_window_view(padded, (patch, patch), axis=(1, 2))
    return np.ascontiguousarray(windows[:, ys, xs].transpose(1, 0, 2, 3))


def read_rule(features: Path) -> CandidateRule:
    """The candidate rule a features folder was made with."""
    path = features / RULE_FILE
    with reading(path, "features"):
        return CandidateRule(**read_json(path, "features"))


def split_videos(ids: list[str], test_fraction: float, seed: int) -> set[str]:
    """The held-out video ids: a stable, seeded, order-independent choice."""
    ranked = sorted(ids, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())
    return set(ranked[: round(len(ids) * test_fraction)])


def frame_sizes(sources: list[Path]) -> dict[str, tuple[int, int]]:
    """(width, height) of each frame stack, read from the .npy headers only."""
    sizes = {}
    for source in sources:
        with reading(source, "frames"):
            _, height, width = np.load(source, mmap_mode="r").shape
        sizes[source.stem] = (width, height)
    return sizes


def check_against_data(params: FeaturesParams, sizes: dict[str, tuple[int, int]]) -> None:
    """What params.yaml can be wrong about only given the data: patch size, split counts."""
    side = min(min(size) for size in sizes.values())
    if params.patch > side // 4:
        raise StageError(
            f"params.yaml: 'features.patch' is {params.patch}, but the smallest frames are "
            f"{side} pixels on a side: a patch may be at most a quarter of that ({side // 4}), "
            "as its memory grows with its square; lower it in params.yaml"
        )
    held_out = len(split_videos(list(sizes), params.test_fraction, params.seed))
    if not 0 < held_out < len(sizes):
        raise StageError(
            f"params.yaml: 'features.test_fraction' {params.test_fraction} holds out {held_out} "
            f"of {len(sizes)} videos, but training and evaluation need one each; change it in "
            "params.yaml"
        )


def defects_by_video(labels: list[Label]) -> dict[str, list[tuple[int, int, int]]]:
    """Defects per video id as (y, x, class index)."""
    defects: dict[str, list[tuple[int, int, int]]] = {}
    for video, x, y, kind in labels:
        defects.setdefault(video, []).append((y, x, CLASSES.index(kind)))
    return defects


def featurize(job: tuple[Path, Path, list[tuple[int, int, int]], CandidateRule]) -> int:
    """Write one video's candidates, patches and labels; return its candidate count."""
    source, target, defects, rule = job
    with reading(source, "frames"):
        frames = np.load(source)
    ys, xs = find_candidates(frames, rule)
    truth = np.zeros(frames.shape[1:], dtype=np.int8)
    for y, x, label in defects:
        truth[y, x] = label
    np.savez(
        target,
        patches=extract_patches(frames, ys, xs, rule.patch),
        coords=np.stack([ys, xs], axis=1).astype(np.int16),
        labels=truth[ys, xs],
        truth=truth,
    )
    return len(ys)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m badpixels.features", description=__doc__)
    parser.add_argument("frames", type=Path, help="folder of .npy frame stacks")
    parser.add_argument("labels", type=Path, help="labels.csv of the raw data")
    parser.add_argument("out", type=Path, help="folder to write train/ and test/ into")
    args = parser.parse_args(argv)
    params = load_params(FeaturesParams, "features")
    rule = CandidateRule(params.patch, params.residual_threshold, params.still_threshold)
    sources = sorted(args.frames.glob("*.npy"))
    if not sources:
        raise StageError(f"{args.frames}: no .npy frame stacks; run `dvc repro frames` first")
    sizes = frame_sizes(sources)
    check_against_data(params, sizes)
    labels, problems = read_labels(args.labels, sizes)
    if problems:
        raise StageError(
            f"{problems[0]}; {len(problems)} problem(s) in all: `dvc repro validate` lists them"
        )
    defects = defects_by_video(labels)
    test = split_videos(list(sizes), params.test_fraction, params.seed)
    with atomic_output(args.out) as tmp:
        for split in ("train", "test"):
            (tmp / split).mkdir(parents=True)
        write_json(tmp / RULE_FILE, asdict(rule))
        jobs = [
            (
                s,
                tmp / ("test" if s.stem in test else "train") / f"{s.stem}.npz",
                defects.get(s.stem, []),
                rule,
            )
            for s in sources
        ]
        parallel_map(featurize, shard(jobs), params.workers, desc="features")


if __name__ == "__main__":
    run(main)
