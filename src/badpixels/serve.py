"""The detector as an MLflow pyfunc, logged as code: frames (T, H, W) uint8 -> class map (H, W).

MLflow runs this file when it logs or loads the model; `artifacts["model"]` is `models/model.pt`.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel, PythonModelContext


class DefectMapModel(PythonModel):
    """Wraps `Detector`: class index per pixel (0 = normal; see `features.CLASSES`)."""

    def load_context(self, context: PythonModelContext) -> None:
        from badpixels.model import Detector

        self.detector = Detector(Path(context.artifacts["model"]))

    def predict(
        self, context: PythonModelContext, model_input: np.ndarray, params: dict | None = None
    ) -> np.ndarray:
        return self.detector.detect(np.asarray(model_input, dtype=np.uint8))


mlflow.models.set_model(DefectMapModel())
