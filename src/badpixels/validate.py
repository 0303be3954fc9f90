"""Stage `validate`: check the raw data before anything trusts it; write the manifest.

python -m badpixels.validate data/raw/toy data/interim/manifest.json
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from badpixels.stage import StageError, atomic_output, load_params, run
from badpixels.synth import KINDS, LABEL_FIELDS
from badpixels.video import read_video


@dataclass(frozen=True)
class ValidateParams:
    min_frames: int


def check_videos(videos: list[Path], min_frames: int) -> tuple[list[dict], list[str]]:
    """Decode every video; return its manifest entries and the problems found."""
    entries, problems = [], []
    for path in tqdm(videos, desc="validate", disable=None):
        try:
            stack = read_video(path)
        except StageError as exc:
            problems.append(str(exc))
            continue
        frames, height, width = stack.shape
        entries.append(
            {"id": path.stem, "file": path.name, "frames": frames, "height": height, "width": width}
        )
    shapes = Counter((e["frames"], e["height"], e["width"]) for e in entries)
    if shapes:
        common = shapes.most_common(1)[0][0]
        for e in entries:
            shape = (e["frames"], e["height"], e["width"])
            if shape != common:
                problems.append(
                    f"{e['file']}: {shape[0]} frames of {shape[1]}x{shape[2]}, but most videos "
                    f"have {common[0]} of {common[1]}x{common[2]} (truncated or foreign file?)"
                )
            elif e["frames"] < min_frames:
                problems.append(f"{e['file']}: {e['frames']} frames, fewer than {min_frames}")
    ids = Counter(path.stem for path in videos)
    problems += [f"video id '{i}' is used by {n} files" for i, n in ids.items() if n > 1]
    return entries, problems


def check_labels(labels: Path, entries: list[dict]) -> list[str]:
    """Problems in `labels.csv`: unknown videos, pixels outside the frame, bad kinds, repeats."""
    sizes = {e["id"]: (e["width"], e["height"]) for e in entries}
    problems, seen = [], set()
    with labels.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != LABEL_FIELDS:
            return [f"{labels}: header must be {','.join(LABEL_FIELDS)}"]
        for line, row in enumerate(reader, start=2):
            problem = _check_label(row, sizes, seen)
            if problem:
                problems.append(f"{labels}:{line}: {problem}")
    return problems


def _check_label(row: dict, sizes: dict, seen: set) -> str | None:
    if row["video"] not in sizes:
        return f"video '{row['video']}' is not among the readable videos"
    if row["kind"] not in KINDS:
        return f"kind '{row['kind']}' is not one of {', '.join(KINDS)}"
    try:
        x, y = int(row["x"]), int(row["y"])
    except ValueError:
        return f"x and y must be whole numbers, got {row['x']!r}, {row['y']!r}"
    width, height = sizes[row["video"]]
    if not (0 <= x < width and 0 <= y < height):
        return f"pixel ({x}, {y}) is outside the {width}x{height} frame"
    if (row["video"], x, y) in seen:
        return f"pixel ({x}, {y}) of '{row['video']}' is labelled twice"
    seen.add((row["video"], x, y))
    return None


def validate(raw: Path, min_frames: int) -> dict:
    """Validate the raw dataset at `raw`; return its manifest or raise with every problem."""
    videos = sorted((raw / "videos").glob("*")) if (raw / "videos").is_dir() else []
    if not videos:
        raise StageError(f"{raw}/videos: no videos found; run `dvc pull` to fetch the data")
    if not (raw / "labels.csv").is_file():
        raise StageError(f"{raw}/labels.csv: missing; run `dvc pull` to fetch the data")
    entries, problems = check_videos(videos, min_frames)
    problems += check_labels(raw / "labels.csv", entries)
    if problems:
        listing = "\n  ".join(problems)
        raise StageError(f"{raw}: {len(problems)} problem(s) in the raw data:\n  {listing}")
    return {"videos": entries}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m badpixels.validate", description=__doc__)
    parser.add_argument("raw", type=Path, help="raw data folder (videos/, labels.csv)")
    parser.add_argument("manifest", type=Path, help="manifest JSON to write")
    args = parser.parse_args(argv)
    params = load_params(ValidateParams, "validate")
    manifest = validate(args.raw, params.min_frames)
    with atomic_output(args.manifest) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1) + "\n")


if __name__ == "__main__":
    run(main)
