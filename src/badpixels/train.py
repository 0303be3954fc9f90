"""Stage `train`: fit the patch CNN on the training videos' candidates.

CPU by default, CUDA when present; seeded and deterministic on CPU.

    python -m badpixels.train data/processed/features models/model.pt
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from badpixels.features import read_rule
from badpixels.model import PixelNet, save_model
from badpixels.stage import StageError, atomic_output, load_params, run


@dataclass(frozen=True)
class TrainParams:
    epochs: int
    batch_size: int
    learning_rate: float
    width: int
    seed: int


def load_split(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """All candidates' patches and labels of one split."""
    files = sorted(folder.glob("*.npz"))
    if not files:
        raise StageError(f"{folder}: no feature files; run `dvc repro features` first")
    patches, labels = [], []
    for file in files:
        with np.load(file) as video:
            patches.append(video["patches"])
            labels.append(video["labels"])
    return np.concatenate(patches), np.concatenate(labels).astype(np.int64)


def train(patches: np.ndarray, labels: np.ndarray, params: TrainParams, patch: int) -> PixelNet:
    """Fit a PixelNet with Adam and cross-entropy; pure apart from the progress bar."""
    torch.manual_seed(params.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)
    net = PixelNet(patch, params.width).to(device)
    optimiser = torch.optim.Adam(net.parameters(), lr=params.learning_rate)
    loss_fn = nn.CrossEntropyLoss()
    x, y = torch.from_numpy(patches), torch.from_numpy(labels)
    order = torch.Generator().manual_seed(params.seed)
    for _ in tqdm(range(params.epochs), desc="train", disable=None):
        for batch in torch.randperm(len(y), generator=order).split(params.batch_size):
            optimiser.zero_grad()
            loss = loss_fn(net(x[batch].to(device)), y[batch].to(device))
            loss.backward()
            optimiser.step()
    return net.cpu().eval()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m badpixels.train", description=__doc__)
    parser.add_argument("features", type=Path, help="features folder (uses its train/)")
    parser.add_argument("model", type=Path, help="model file to write")
    args = parser.parse_args(argv)
    params = load_params(TrainParams, "train")
    patches, labels = load_split(args.features / "train")
    rule = read_rule(args.features)
    net = train(patches, labels, params, rule.patch)
    with atomic_output(args.model) as tmp:
        save_model(tmp, net, rule)


if __name__ == "__main__":
    run(main)
