"""The defect classifier: a small CNN over a pixel's spatio-temporal patch.

The saved file holds the weights and the exact preprocessing (candidate rule, patch size,
class names), so `Detector` turns a raw frame stack into a defect map with nothing else.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from badpixels.features import CLASSES, CandidateRule, extract_patches, find_candidates

STATS = 8  # per-pixel temporal statistics fed beside the convolutional features


def prepare(patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw uint8 patches (N, T, P, P) -> sequences (N, P*P + 1, T) and stats (N, STATS).

    The sequences are every patch pixel over time, centred, plus the centre pixel's
    residual against the median of its eight neighbours.
    """
    x = patches.float() / 255.0
    centre = patches.shape[-1] // 2
    ring = x[:, :, centre - 1 : centre + 2, centre - 1 : centre + 2].flatten(2)
    neighbours = torch.cat([ring[:, :, :4], ring[:, :, 5:]], dim=2)
    series = x[:, :, centre, centre]
    residual = series - neighbours.median(dim=2).values
    steps = (series[:, 1:] - series[:, :-1]).abs()
    stats = torch.stack(
        [
            residual.mean(1),
            residual.std(1),
            residual.amax(1),
            residual.amin(1),
            (residual > 0.15).float().mean(1),
            series.mean(1),
            series.std(1) * 10.0,
            steps.amax(1) * 10.0,
        ],
        dim=1,
    )
    pixels = x.flatten(2).transpose(1, 2)
    pixels = pixels - pixels.mean(dim=(1, 2), keepdim=True)
    return torch.cat([pixels, residual.unsqueeze(1)], dim=1) * 4.0, stats * 4.0


class PixelNet(nn.Module):
    """Temporal convolutions over the patch's pixels, mean and max pooling, a small head."""

    def __init__(self, patch: int, width: int = 32) -> None:
        super().__init__()
        self.patch, self.width = patch, width
        self.conv = nn.Sequential(
            nn.Conv1d(patch * patch + 1, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv1d(width, width, 3, padding=1),
            nn.ReLU(),
        )
        self.head = nn.Sequential(
            nn.Linear(2 * width + STATS, 32), nn.ReLU(), nn.Linear(32, len(CLASSES))
        )

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        sequences, stats = prepare(patches)
        features = self.conv(sequences)  # (N, width, T)
        pooled = torch.cat([features.mean(2), features.amax(2), stats], dim=1)
        return self.head(pooled)


def save_model(path: Path, net: PixelNet, rule: CandidateRule) -> None:
    saved = {"state_dict": net.state_dict(), "width": net.width, "rule": asdict(rule)}
    torch.save({**saved, "classes": CLASSES}, path)


def load_model(path: Path) -> tuple[PixelNet, CandidateRule]:
    saved = torch.load(path, map_location="cpu", weights_only=True)
    rule = CandidateRule(**saved["rule"])
    net = PixelNet(rule.patch, saved["width"])
    net.load_state_dict(saved["state_dict"])
    return net.eval(), rule


@torch.no_grad()
def predict_proba(net: PixelNet, patches: np.ndarray, batch: int = 512) -> np.ndarray:
    """Class probabilities (N, classes) for raw uint8 patches.

    Every batch has the same shape (the last is padded): on the CPU, each new input shape
    makes the allocator keep more memory, so varying shapes grow the RSS video by video.
    """
    padded = np.zeros((-len(patches) % batch, *patches.shape[1:]), patches.dtype)
    inputs = torch.from_numpy(np.concatenate([patches, padded]))
    chunks = [torch.softmax(net(part), dim=1) for part in inputs.split(batch)]
    return torch.cat(chunks)[: len(patches)].numpy() if chunks else np.zeros((0, len(CLASSES)))


class Detector:
    """A trained model plus its preprocessing: frames (T, H, W) uint8 -> class map (H, W)."""

    def __init__(self, path: Path) -> None:
        self.net, self.rule = load_model(path)

    def scores(self, frames: np.ndarray) -> np.ndarray:
        """Per-pixel class probabilities (H, W, classes); non-candidates are surely normal."""
        ys, xs = find_candidates(frames, self.rule)
        proba = np.zeros((*frames.shape[1:], len(CLASSES)), np.float32)
        proba[..., 0] = 1.0
        proba[ys, xs] = predict_proba(self.net, extract_patches(frames, ys, xs, self.rule.patch))
        return proba

    def detect(self, frames: np.ndarray) -> np.ndarray:
        """Class index per pixel (0 = normal; see CLASSES)."""
        return self.scores(frames).argmax(axis=-1)
