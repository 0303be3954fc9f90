"""A tiny real git + DVC project that branchflow can register: a few-line pyfunc model
(`x > threshold`) instead of the example's CNN, so registry tests need no training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from tests.conftest import init_repo, sh

NAME = "threshold"
MODEL = "model/params.json"  # the model's one artifact, written by the `train` stage
METRICS = "reports/metrics.json"  # written by the `evaluate` stage
PLOT = "reports/scores.csv"
DATA = "data/points.json"  # the DVC data source (`data/points.json.dvc`)
EXAMPLE = "examples/x.npy"

SERVE = """\
import json
from pathlib import Path

import mlflow
import numpy as np


class Threshold(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        self.threshold = json.loads(Path(context.artifacts["model"]).read_text())["threshold"]

    def predict(self, context, model_input, params=None):
        return np.asarray(model_input, dtype=np.float64) > self.threshold


mlflow.models.set_model(Threshold())
"""

PIPELINE = f"""\
import csv, json, pathlib, sys, yaml

params = yaml.safe_load(pathlib.Path("params.yaml").read_text())["train"]
if sys.argv[1] == "train":
    pathlib.Path("{MODEL}").parent.mkdir(exist_ok=True)
    pathlib.Path("{MODEL}").write_text(json.dumps({{"threshold": params["threshold"]}}))
else:
    threshold = json.loads(pathlib.Path("{MODEL}").read_text())["threshold"]
    points = json.loads(pathlib.Path("{DATA}").read_text())
    right = sum(int(x > threshold) == label for x, label in points)
    pathlib.Path("reports").mkdir(exist_ok=True)
    metrics = {{"model": {{"accuracy": right / len(points), "points": len(points)}}}}
    pathlib.Path("{METRICS}").write_text(json.dumps(metrics))
    with open("{PLOT}", "w", newline="") as handle:
        csv.writer(handle).writerows([("x", "label"), *points])
"""

DVC_YAML = {
    "stages": {
        "train": {
            "cmd": "python pipeline.py train",
            "deps": ["pipeline.py"],
            "params": ["train"],
            "outs": [MODEL],
        },
        "evaluate": {
            "cmd": "python pipeline.py evaluate",
            "deps": ["pipeline.py", MODEL, DATA],
            "metrics": [{METRICS: {"cache": False}}],
            "plots": [{PLOT: {"cache": False, "x": "x", "y": "label"}}],
        },
    },
}

PYPROJECT = f"""\
[project]
name = "{NAME}"

[tool.branchflow.model]
python_model = "serve.py"
artifacts = {{ model = "{MODEL}" }}
input_example = "{EXAMPLE}"
pip_requirements = ["mlflow-skinny", "numpy"]  # nothing to infer: logging stays fast
key_metrics = ["model.accuracy"]

[tool.branchflow.model.signature]
inputs = [{{ type = "tensor", tensor-spec = {{ dtype = "float64", shape = [-1] }} }}]
outputs = [{{ type = "tensor", tensor-spec = {{ dtype = "bool", shape = [-1] }} }}]
"""


def make_pyfunc_repo(path: Path) -> Path:
    """`main` of a reproduced, committed project whose model is `x > 0.5`."""
    (path / "examples").mkdir(parents=True)
    np.save(path / EXAMPLE, np.array([0.1, 0.3, 0.6, 0.8]))
    (path / "serve.py").write_text(SERVE)
    (path / "pipeline.py").write_text(PIPELINE)
    (path / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    (path / "params.yaml").write_text(yaml.safe_dump({"train": {"threshold": 0.5, "seed": 0}}))
    (path / "pyproject.toml").write_text(PYPROJECT)
    (path / ".gitignore").write_text("/mlflow.db\n/mlartifacts/\n")
    init_repo(path)
    (path / "data").mkdir()
    (path / DATA).write_text(json.dumps([[0.1, 0], [0.4, 0], [0.7, 1], [0.9, 1]]))
    sh("dvc", "init", "-q", cwd=path)
    sh("dvc", "config", "core.analytics", "false", cwd=path)
    sh("dvc", "add", "-q", DATA, cwd=path)
    sh("dvc", "repro", "-q", cwd=path)
    sh("git", "add", "-A", cwd=path)
    sh("git", "commit", "-q", "-m", "main: the project, reproduced", cwd=path)
    return path


def other_bytes(repo: Path, threshold: float = 0.25) -> None:
    """Another model (another threshold) in the workspace, without `dvc repro`."""
    (repo / MODEL).write_text(json.dumps({"threshold": threshold}))
