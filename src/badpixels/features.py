"""Stage `features`: candidate pixels and their spatio-temporal patches, one video at a time.

A pixel is a candidate when it never changes (dead, stuck) or when it strays far from the
median of its 3x3 neighbourhood in some frame (hot, flickering). Each candidate keeps the
raw (T, P, P) patch around it; videos are split into train and test sets, never pixels.

    python -m badpixels.features data/interim/frames data/raw/toy/labels.csv \
        data/processed/features
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import ndimage

from badpixels.stage import StageError, atomic_output, load_params, parallel_map, run
from badpixels.synth import KINDS

CLASSES = ("normal", *KINDS)
RULE_FILE = "rule.json"


@dataclass(frozen=True)
class FeaturesParams:
    patch: int
    residual_threshold: float
    still_threshold: float
    test_fraction: float
    seed: int
    workers: int


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
    return CandidateRule(**json.loads((features / RULE_FILE).read_text()))


def split_videos(ids: list[str], test_fraction: float, seed: int) -> set[str]:
    """The held-out video ids: a stable, seeded, order-independent choice."""
    ranked = sorted(ids, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())
    return set(ranked[: round(len(ids) * test_fraction)])


def read_labels(path: Path) -> dict[str, list[tuple[int, int, int]]]:
    """Defects per video id as (y, x, class index)."""
    defects: dict[str, list[tuple[int, int, int]]] = {}
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            entry = (int(row["y"]), int(row["x"]), CLASSES.index(row["kind"]))
            defects.setdefault(row["video"], []).append(entry)
    return defects


def featurize(job: tuple[Path, Path, list[tuple[int, int, int]], CandidateRule]) -> int:
    """Write one video's candidates, patches and labels; return its candidate count."""
    source, target, defects, rule = job
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
    if params.patch < 3 or params.patch % 2 == 0:
        raise StageError(f"params.yaml: features.patch must be odd and >= 3, got {params.patch}")
    rule = CandidateRule(params.patch, params.residual_threshold, params.still_threshold)
    sources = sorted(args.frames.glob("*.npy"))
    defects = read_labels(args.labels)
    test = split_videos([s.stem for s in sources], params.test_fraction, params.seed)
    with atomic_output(args.out) as tmp:
        for split in ("train", "test"):
            (tmp / split).mkdir(parents=True)
        (tmp / RULE_FILE).write_text(json.dumps(asdict(rule)) + "\n")
        jobs = [
            (
                s,
                tmp / ("test" if s.stem in test else "train") / f"{s.stem}.npz",
                defects.get(s.stem, []),
                rule,
            )
            for s in sources
        ]
        parallel_map(featurize, jobs, params.workers, desc="features")


if __name__ == "__main__":
    run(main)
