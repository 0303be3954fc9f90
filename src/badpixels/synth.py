"""Build the raw dataset: camera pans over real photographs, with known defective pixels.

Each video pans and zooms across a photograph that ships inside scikit-image (nothing is
downloaded), adds shot and read noise, then corrupts a few sensor pixels. Videos are
lossless FFV1 files; `labels.csv` names every defective pixel and its kind.

    python -m badpixels.synth --scale toy --out data/raw/toy
"""

from __future__ import annotations

import argparse
import csv
import io
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage import color, data

from badpixels.stage import atomic_output, read_text, run
from badpixels.video import write_video

KINDS = ("hot", "dead", "stuck", "flicker")
PHOTOS = (
    "astronaut",
    "brick",
    "camera",
    "cat",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "hubble_deep_field",
    "moon",
    "retina",
    "rocket",
)
LABEL_FIELDS = ("video", "x", "y", "kind")
Label = tuple[str, int, int, str]  # video id, x, y, kind


@dataclass(frozen=True)
class Scale:
    """How much data to make."""

    videos: int
    frames: int
    height: int
    width: int
    defects: tuple[int, int]  # min, max defective pixels per video
    noise: float = 1.0  # multiplies shot and read noise


SCALES = {
    "toy": Scale(videos=64, frames=24, height=64, width=64, defects=(8, 16)),
    "full": Scale(videos=480, frames=32, height=128, width=128, defects=(24, 48)),
}


def load_photo(name: str) -> np.ndarray:
    """A bundled scikit-image photograph as float grey levels in [0, 1]."""
    image = getattr(data, name)()
    if image.ndim == 3:
        image = color.rgb2gray(image[..., :3])
    image = image.astype(np.float32)
    return image / 255.0 if image.max() > 1.0 else image


def camera_pan(photo: np.ndarray, scale: Scale, rng: np.random.Generator) -> np.ndarray:
    """Float frames (T, H, W) in [0, 1] of a camera panning and zooming over `photo`."""
    size = np.array([scale.height, scale.width])
    fits = float(np.min((np.array(photo.shape) - 2) / (size * 1.15)))
    zoom0 = min(rng.uniform(1.2, 2.5), fits)
    zoom1 = zoom0 * rng.uniform(0.85, 1.15)
    span = size * max(zoom0, zoom1)
    room = np.array(photo.shape) - span - 2
    angle = rng.uniform(0.0, 2.0 * np.pi)
    shift = rng.uniform(0.2, 0.5) * span * np.array([np.sin(angle), np.cos(angle)])
    shift = np.clip(shift, -room, room)  # a pan always moves, within the photo
    start = rng.uniform(np.maximum(0.0, -shift), np.minimum(room, room - shift))
    end = start + shift
    rows, cols = np.mgrid[0 : scale.height, 0 : scale.width].astype(np.float32)
    frames = []
    for t in np.linspace(0.0, 1.0, scale.frames):
        zoom = zoom0 + (zoom1 - zoom0) * t
        origin = start + (end - start) * t
        coords = [origin[0] + rows * zoom, origin[1] + cols * zoom]
        frames.append(ndimage.map_coordinates(photo, coords, order=1, mode="nearest"))
    return np.stack(frames)


def expose(scene: np.ndarray, scale: Scale, rng: np.random.Generator) -> np.ndarray:
    """Map scene radiance to 8-bit sensor values with shot and read noise."""
    signal = 20.0 + 200.0 * scene
    sigma = scale.noise * np.sqrt(2.0**2 + 0.05 * signal)
    noisy = signal + rng.normal(0.0, 1.0, scene.shape) * sigma
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def add_defects(
    video: np.ndarray, scale: Scale, rng: np.random.Generator
) -> list[tuple[int, int, str]]:
    """Corrupt random pixels of `video` in place; return (x, y, kind) for each."""
    count = int(rng.integers(scale.defects[0], scale.defects[1] + 1))
    flat = rng.choice(scale.height * scale.width, size=count, replace=False)
    defects = []
    for index in flat:
        y, x = divmod(int(index), scale.width)
        kind = KINDS[int(rng.integers(len(KINDS)))]
        pixel = video[:, y, x].astype(np.int16)
        if kind == "hot":
            pixel = pixel + int(rng.integers(50, 120))
        elif kind == "dead":
            pixel[:] = 0
        elif kind == "stuck":
            pixel[:] = int(rng.integers(40, 216))
        else:  # flicker: bright in a random subset of frames, at least two
            on = rng.random(scale.frames) < rng.uniform(0.2, 0.5)
            on[rng.choice(scale.frames, size=2, replace=False)] = True
            pixel[on] += int(rng.integers(80, 160))
        video[:, y, x] = np.clip(pixel, 0, 255)
        defects.append((x, y, kind))
    return defects


def make_video(
    index: int, scale: Scale, seed: int
) -> tuple[np.ndarray, list[tuple[int, int, str]]]:
    """Video number `index` of the dataset for `seed`, and its defects. Deterministic."""
    rng = np.random.default_rng([seed, index])
    photo = load_photo(PHOTOS[index % len(PHOTOS)])
    video = expose(camera_pan(photo, scale, rng), scale, rng)
    return video, add_defects(video, scale, rng)


def read_labels(path: Path, sizes: dict[str, tuple[int, int]]) -> tuple[list[Label], list[str]]:
    """The labels of `labels.csv` that fit the videos of `sizes` (id -> width, height), and a
    problem for each row that does not: unknown video or kind, pixel outside the frame, repeat.
    """
    text = read_text(path, "restore it with `dvc pull`, or save it as UTF-8")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        rows = list(reader)
    except csv.Error as exc:
        return [], [f"{path}:{reader.line_num}: not CSV ({exc}); fix or restore the file"]
    if not rows or tuple(rows[0]) != LABEL_FIELDS:
        return [], [f"{path}: header must be {','.join(LABEL_FIELDS)}"]
    labels, problems, seen = [], [], set()
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue  # a blank line
        label, problem = _parse_label(row, sizes, seen)
        if problem:
            problems.append(f"{path}:{line}: {problem}")
        else:
            labels.append(label)
    return labels, problems


def _parse_label(
    row: list[str], sizes: dict[str, tuple[int, int]], seen: set[tuple[str, int, int]]
) -> tuple[Label, None] | tuple[None, str]:
    if len(row) != len(LABEL_FIELDS):
        return None, f"{len(row)} fields, expected {len(LABEL_FIELDS)} ({','.join(LABEL_FIELDS)})"
    video, x_text, y_text, kind = row
    if video not in sizes:
        return None, f"video '{video}' is not among the readable videos"
    if kind not in KINDS:
        return None, f"kind '{kind}' is not one of {', '.join(KINDS)}"
    try:
        x, y = int(x_text), int(y_text)
    except ValueError:
        return None, f"x and y must be whole numbers, got {x_text!r}, {y_text!r}"
    width, height = sizes[video]
    if not (0 <= x < width and 0 <= y < height):
        return None, f"pixel ({x}, {y}) is outside the {width}x{height} frame"
    if (video, x, y) in seen:
        return None, f"pixel ({x}, {y}) of '{video}' is labelled twice"
    seen.add((video, x, y))
    return (video, x, y, kind), None


def write_dataset(out: Path, scale: Scale, seed: int) -> None:
    """Write `videos/*.mkv` and `labels.csv` under `out`, atomically."""
    with atomic_output(out) as tmp:
        (tmp / "videos").mkdir(parents=True)
        with (tmp / "labels.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(LABEL_FIELDS)
            for index in range(scale.videos):
                video_id = f"vid{index:04d}"
                video, defects = make_video(index, scale, seed)
                write_video(tmp / "videos" / f"{video_id}.mkv", video)
                writer.writerows((video_id, x, y, kind) for x, y, kind in defects)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m badpixels.synth", description=__doc__)
    parser.add_argument("--scale", choices=SCALES, default="toy")
    parser.add_argument("--videos", type=int, help="override the number of videos")
    parser.add_argument("--noise", type=float, help="override the noise multiplier")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    overrides = {"videos": args.videos, "noise": args.noise}
    scale = replace(SCALES[args.scale], **{k: v for k, v in overrides.items() if v is not None})
    write_dataset(args.out, scale, args.seed)


if __name__ == "__main__":
    run(main)
