"""Stage `evaluate`: score the CNN and the classical baseline on the held-out videos.

Writes metrics (precision, recall, F1, PR-AUC, overall and per defect kind), each held-out
video's detection counts (`units.csv`: what the gate's paired intervals resample), DVC plot
data (PR curves, confusion matrix) and a PNG of detections drawn on a frame.

    python -m badpixels.evaluate models/model.pt data/processed/features data/interim/frames \
        reports
"""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    precision_recall_fscore_support,
)
from tqdm import tqdm

from badpixels.baseline import baseline_scores
from badpixels.features import CLASSES, KINDS
from badpixels.model import PixelNet, load_model, predict_proba
from badpixels.stage import (
    StageError,
    atomic_output,
    load_params,
    param,
    reading,
    require_finite,
    run,
    write_json,
)


@dataclass(frozen=True)
class EvaluateParams:
    baseline_threshold: float = param(at_least=0, at_most=255)  # grey levels


@dataclass
class Predictions:
    """Flattened per-pixel results over every held-out video, and one video to draw."""

    truth: np.ndarray  # class index per pixel
    cnn_class: np.ndarray  # predicted class index
    cnn_score: np.ndarray  # probability of being defective
    base_flag: np.ndarray  # baseline says defective
    base_score: np.ndarray  # baseline residual score
    units: list[dict]  # per video: its name and each detector's true/false positives, misses
    sample: tuple[np.ndarray, np.ndarray, np.ndarray]  # a frame, its truth and CNN maps


def predict_video(net: PixelNet, file: Path, frames: Path, threshold: float) -> list[np.ndarray]:
    """Truth, CNN class, CNN score, baseline flag and score maps (H, W) of one video."""
    with reading(file, "features"), np.load(file) as video:
        truth, coords, patches = video["truth"], video["coords"], video["patches"]
    proba = np.zeros((*truth.shape, len(CLASSES)), np.float32)
    proba[..., 0] = 1.0
    proba[coords[:, 0], coords[:, 1]] = predict_proba(net, patches)
    with reading(frames / f"{file.stem}.npy", "frames"):
        stack = np.load(frames / f"{file.stem}.npy")
    scores = baseline_scores(stack)
    return [truth, proba.argmax(-1), 1.0 - proba[..., 0], scores > threshold, scores]


def predict_videos(model: Path, features: Path, frames: Path, threshold: float) -> Predictions:
    """Run both detectors over every held-out video."""
    with reading(model, "train"):
        net, _ = load_model(model)
    files = sorted((features / "test").glob("*.npz"))
    if not files:
        raise StageError(f"{features}/test: no held-out videos; run `dvc repro features`")
    maps = [
        predict_video(net, file, frames, threshold)
        for file in tqdm(files, desc="evaluate", disable=None)
    ]
    flat = [np.concatenate([m[i].ravel() for m in maps]) for i in range(5)]
    units = [video_counts(file.stem, m) for file, m in zip(files, maps, strict=True)]
    first = np.load(frames / f"{files[0].stem}.npy")[0]
    return Predictions(*flat, units=units, sample=(first, maps[0][0], maps[0][1]))


def video_counts(video: str, maps: list[np.ndarray]) -> dict:
    """One video's defective-pixel counts: true positives, false positives and misses of the
    CNN and the baseline, from which the overall precision, recall and F1 are sums."""
    truth, cnn_class, _, base_flag, _ = maps
    row: dict = {"video": video}
    for name, flag in (("cnn", cnn_class > 0), ("baseline", base_flag)):
        defective = truth > 0
        row[f"{name}_tp"] = int((flag & defective).sum())
        row[f"{name}_fp"] = int((flag & ~defective).sum())
        row[f"{name}_fn"] = int((~flag & defective).sum())
    return row


def detection_metrics(truth: np.ndarray, flag: np.ndarray, score: np.ndarray) -> dict:
    """Precision, recall, F1 and PR-AUC of a defective/normal decision."""
    precision, recall, f1, _ = precision_recall_fscore_support(
        truth, flag, average="binary", zero_division=0
    )
    pr_auc = average_precision_score(truth, score) if truth.any() else 0.0
    values = {"precision": precision, "recall": recall, "f1": f1, "pr_auc": pr_auc}
    return {k: round(float(v), 4) for k, v in values.items()}


def model_metrics(truth: np.ndarray, flag: np.ndarray, score: np.ndarray) -> dict:
    """Overall metrics, and per kind on that kind's pixels against the normal ones."""
    metrics = {"overall": detection_metrics(truth > 0, flag, score)}
    for index, kind in enumerate(KINDS, start=1):
        keep = (truth == 0) | (truth == index)
        metrics[kind] = detection_metrics(truth[keep] == index, flag[keep], score[keep])
    return metrics


def pr_curve(truth: np.ndarray, score: np.ndarray, points: int = 200) -> list[dict]:
    """At most `points` (recall, precision) rows of the defective/normal PR curve."""
    precision, recall, _ = precision_recall_curve(truth > 0, score)
    keep = np.unique(np.linspace(0, len(recall) - 1, points).round().astype(int))
    return [
        {"recall": round(float(recall[i]), 4), "precision": round(float(precision[i]), 4)}
        for i in keep
    ]


def confusion_rows(truth: np.ndarray, predicted: np.ndarray) -> list[dict]:
    """(actual, predicted) kind per pixel where either says defective."""
    shown = (truth > 0) | (predicted > 0)
    return [
        {"actual": CLASSES[a], "predicted": CLASSES[b]}
        for a, b in zip(truth[shown], predicted[shown], strict=True)
    ]


def write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def draw_detections(path: Path, frame: np.ndarray, truth: np.ndarray, found: np.ndarray) -> None:
    """A frame with true defects circled and CNN detections marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 6))
    ax.imshow(frame, cmap="gray", vmin=0, vmax=255)
    ty, tx = np.nonzero(truth)
    fy, fx = np.nonzero(found)
    ax.scatter(tx, ty, s=120, facecolors="none", edgecolors="lime", label="true defect")
    ax.scatter(fx, fy, s=30, marker="x", color="red", label="CNN detection")
    ax.set_axis_off()
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("Held-out frame: defects and detections")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def evaluate(p: Predictions) -> dict:
    cnn = model_metrics(p.truth, p.cnn_class > 0, p.cnn_score)
    cnn["kind_accuracy"] = round(
        float(np.mean(p.cnn_class[p.truth > 0] == p.truth[p.truth > 0])), 4
    )
    return {"cnn": cnn, "baseline": model_metrics(p.truth, p.base_flag, p.base_score)}


def write_reports(reports: Path, metrics: dict, p: Predictions) -> None:
    """metrics.json, units.csv, plots/ (PR curves, confusion rows) and figures/, each
    atomically."""
    require_finite(reports / "metrics.json", metrics)  # before any of them is written
    with atomic_output(reports / "units.csv") as tmp:
        write_csv(tmp, p.units)
    with atomic_output(reports / "plots") as tmp:
        tmp.mkdir()
        write_csv(tmp / "pr_cnn.csv", pr_curve(p.truth, p.cnn_score))
        write_csv(tmp / "pr_baseline.csv", pr_curve(p.truth, p.base_score))
        write_csv(tmp / "confusion.csv", confusion_rows(p.truth, p.cnn_class))
    with atomic_output(reports / "figures") as tmp:
        tmp.mkdir()
        draw_detections(tmp / "detections.png", *p.sample)
    write_json(reports / "metrics.json", metrics, indent=2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m badpixels.evaluate", description=__doc__)
    parser.add_argument("model", type=Path)
    parser.add_argument("features", type=Path)
    parser.add_argument("frames", type=Path)
    parser.add_argument("reports", type=Path, help="folder for metrics.json, plots/, figures/")
    args = parser.parse_args(argv)
    params = load_params(EvaluateParams, "evaluate")
    predictions = predict_videos(args.model, args.features, args.frames, params.baseline_threshold)
    metrics = evaluate(predictions)
    write_reports(args.reports, metrics, predictions)
    print(json.dumps({m: metrics[m]["overall"] for m in metrics}))


if __name__ == "__main__":
    run(main)
