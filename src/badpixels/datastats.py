"""Statistics of a raw dataset, for drift checks: a flat JSON object of numbers.

python -m badpixels.datastats data/raw/toy reports/data_stats.json

- `mean_intensity`: mean grey level over every frame of every video.
- `noise_sigma`: median over videos of the sensor noise estimate (grey levels).
- `defect_rate`: labelled defective pixels per sensor pixel.

The noise estimate is Immerkaer's (1996) Laplacian-difference operator, whose response to
white noise of standard deviation s has standard deviation 6 s, taken over 8x8 blocks; the
10th percentile of the block estimates keeps flat regions and ignores texture and edges.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from badpixels.stage import StageError, run, write_json
from badpixels.synth import read_labels
from badpixels.video import read_video

LAPLACIAN_DIFFERENCE = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)
NOISE_GAIN = 6.0  # sqrt of the sum of the squared kernel weights
BLOCK = 8
FLAT_PERCENTILE = 10


def noise_sigma(stack: np.ndarray) -> float:
    """Estimated sensor noise (grey levels) of a (T, H, W) video, robust to texture."""
    frames = stack.astype(np.float32)
    response = np.stack([ndimage.convolve(frame, LAPLACIAN_DIFFERENCE) for frame in frames])
    response = response[:, 1:-1, 1:-1]  # the border sees the boundary padding
    count, height, width = response.shape
    rows, cols = height // BLOCK, width // BLOCK
    if rows == 0 or cols == 0:
        raise StageError(f"frames of {height + 2}x{width + 2} are too small to estimate noise")
    blocks = response[:, : rows * BLOCK, : cols * BLOCK].reshape(count, rows, BLOCK, cols, BLOCK)
    sigmas = np.sqrt((blocks**2).mean(axis=(2, 4))) / NOISE_GAIN
    return float(np.percentile(sigmas, FLAT_PERCENTILE))


def dataset_stats(raw: Path) -> dict[str, float]:
    """`mean_intensity`, `noise_sigma` and `defect_rate` of the dataset at `raw`."""
    videos = sorted((raw / "videos").glob("*.mkv"))
    labels = raw / "labels.csv"
    if not videos:
        raise StageError(f"{raw}/videos: no .mkv files; run `dvc pull` or pass the dataset folder")
    if not labels.is_file():
        raise StageError(f"{labels}: not found; run `dvc pull` or pass the dataset folder")
    means, noises, pixels, sizes = [], [], 0, {}
    for path in tqdm(videos, desc="datastats", disable=None):
        stack = read_video(path)
        means.append(float(stack.mean()))
        noises.append(noise_sigma(stack))
        pixels += stack.shape[1] * stack.shape[2]
        sizes[path.stem] = (stack.shape[2], stack.shape[1])
    defects, problems = read_labels(labels, sizes)
    if problems:
        raise StageError(f"{problems[0]}; {len(problems)} problem(s) in all")
    return {
        "mean_intensity": round(float(np.mean(means)), 4),
        "noise_sigma": round(float(np.median(noises)), 4),
        "defect_rate": round(len(defects) / pixels, 6),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m badpixels.datastats", description=__doc__)
    parser.add_argument("raw", type=Path, help="dataset folder (videos/ and labels.csv)")
    parser.add_argument("out", type=Path, help="JSON file to write")
    args = parser.parse_args(argv)
    stats = dataset_stats(args.raw)
    write_json(args.out, stats, indent=2)


if __name__ == "__main__":
    run(main)
