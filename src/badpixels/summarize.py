"""Stage `summarize`: count the defects of every scored video and check them against labels.

It reads the class maps `score` wrote (however many shards wrote them) and the batch's
labels, and writes the summary: the pinned model, defects per video and kind, and precision,
recall and F1 of the flagged pixels against the labelled ones; and the metrics: the summary's
agreement and defects per kind, which `branchflow report --pipeline scoring` compares.

    python -m badpixels.summarize pipelines/scoring/model.json data/scoring/maps \
        data/batches/toy/labels.csv data/scoring/summary.json data/scoring/metrics.json
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from badpixels.score import Pin, read_pin
from badpixels.stage import StageError, reading, run, write_json
from badpixels.synth import KINDS, read_labels

Defect = tuple[int, int, int]  # x, y, class index (see features.CLASSES)
Scored = tuple[str, tuple[int, int], list[Defect]]  # video id, (width, height), its defects


def read_map(path: Path) -> Scored:
    """A video's id, (width, height) and defects, from the class map `score` wrote."""
    with reading(path, "pipelines/scoring/dvc.yaml:score"):
        found = np.load(path)
    ys, xs = np.nonzero(found)
    defects = [(int(x), int(y), int(found[y, x])) for y, x in zip(ys, xs, strict=True)]
    return path.stem, (found.shape[1], found.shape[0]), defects


def video_summary(defects: list[Defect], truth: set[tuple[int, int]]) -> dict[str, Any]:
    """Defects per kind of one video, and its agreement counts with the labelled pixels."""
    flagged = {(x, y) for x, y, _ in defects}
    classes = [found for _, _, found in defects]
    return {
        "defects": {kind: classes.count(i) for i, kind in enumerate(KINDS, start=1)},
        "labelled": len(truth),
        "true_positives": len(flagged & truth),
        "false_positives": len(flagged - truth),
        "false_negatives": len(truth - flagged),
    }


def agreement(videos: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Precision, recall and F1 of defective-pixel detection over every video."""
    tp, fp, fn = (
        sum(v[key] for v in videos.values())
        for key in ("true_positives", "false_positives", "false_negatives")
    )
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {k: round(v, 4) for k, v in {"precision": precision, "recall": recall, "f1": f1}.items()}


def summarize(pin: Pin, results: list[Scored], labels: Path) -> dict[str, Any]:
    """The summary document of a scored batch, its labels read from `labels`."""
    found, problems = read_labels(labels, {vid: size for vid, size, _ in results})
    if problems:
        raise StageError(f"{problems[0]} ({len(problems)} problems); fix the batch's labels")
    truth: dict[str, set[tuple[int, int]]] = {vid: set() for vid, _, _ in results}
    for vid, x, y, _ in found:
        truth[vid].add((x, y))
    videos = {vid: video_summary(defects, truth[vid]) for vid, _, defects in results}
    totals = {kind: sum(v["defects"][kind] for v in videos.values()) for kind in KINDS}
    return {
        "model": dataclasses.asdict(pin),
        "videos": videos,
        "defects": totals,
        "agreement": agreement(videos),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m badpixels.summarize", description=__doc__)
    parser.add_argument("pin", type=Path, help="the model pin the maps were made with")
    parser.add_argument("maps", type=Path, help="folder of .npy class maps")
    parser.add_argument("labels", type=Path, help="labels.csv of the batch")
    parser.add_argument("summary", type=Path, help="summary JSON to write")
    parser.add_argument("metrics", type=Path, help="metrics JSON to write (the DVC metrics)")
    args = parser.parse_args(argv)
    maps = sorted(args.maps.glob("*.npy"))
    if not maps:
        raise StageError(f"{args.maps}: no class maps; run `dvc repro pipelines/scoring/dvc.yaml`")
    summary = summarize(read_pin(args.pin), [read_map(path) for path in maps], args.labels)
    write_json(args.summary, summary, indent=2)
    write_json(args.metrics, metrics(summary), indent=2)


def metrics(summary: dict[str, Any]) -> dict[str, Any]:
    """What the scoring pipeline's report and gate judge: agreement and defects per kind."""
    return {"agreement": summary["agreement"], "defects": summary["defects"]}


if __name__ == "__main__":
    run(main)
