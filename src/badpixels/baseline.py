"""The textbook detector: threshold each pixel's residual against its 3x3 median filter."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def baseline_scores(frames: np.ndarray) -> np.ndarray:
    """Per-pixel score (H, W): the median over time of |pixel - 3x3 median|, in grey levels."""
    stack = frames.astype(np.float32)
    residual = stack - ndimage.median_filter(stack, size=(1, 3, 3), mode="reflect")
    return np.median(np.abs(residual), axis=0)


def baseline_detect(frames: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean defect map (H, W): pixels whose typical residual exceeds `threshold`."""
    return baseline_scores(frames) > threshold
