"""Stage `validate`: check the raw data before anything trusts it; write the manifest.

python -m badpixels.validate data/raw/toy data/interim/manifest.json
"""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from badpixels.stage import StageError, load_params, param, run, write_json
from badpixels.synth import read_labels
from badpixels.video import read_video


@dataclass(frozen=True)
class ValidateParams:
    min_frames: int = param(at_least=2)  # the model's temporal statistics need two frames


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


def validate(raw: Path, min_frames: int) -> dict:
    """Validate the raw dataset at `raw`; return its manifest or raise with every problem."""
    videos = sorted((raw / "videos").glob("*")) if (raw / "videos").is_dir() else []
    if not videos:
        raise StageError(f"{raw}/videos: no videos found; run `dvc pull` to fetch the data")
    if not (raw / "labels.csv").is_file():
        raise StageError(f"{raw}/labels.csv: missing; run `dvc pull` to fetch the data")
    entries, problems = check_videos(videos, min_frames)
    sizes = {e["id"]: (e["width"], e["height"]) for e in entries}
    problems += read_labels(raw / "labels.csv", sizes)[1]
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
    write_json(args.manifest, manifest, indent=1)


if __name__ == "__main__":
    run(main)
