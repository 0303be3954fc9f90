"""A tiny real git + DVC project in the shape of DVC's example-get-started: its `train` stage
fits a scikit-learn LogisticRegression on a few rows and pickles it to `model.pkl`, and
branchflow registers it with `flavor = "sklearn"`, without a serving wrapper."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from tests.conftest import init_repo, sh

NAME = "get-started"
MODEL = "model.pkl"
METRICS = "eval/metrics.json"
DATA = "data/rows.json"  # the DVC data source: [[x1, x2, label], ...]
EXAMPLE = "examples/rows.npy"
ROWS = [[0.0, 0.1, 0], [0.2, 0.0, 0], [0.1, 0.3, 0], [0.9, 1.0, 1], [1.0, 0.8, 1], [0.8, 0.9, 1]]

PIPELINE = f"""\
import json, pathlib, pickle, sys

import yaml
from sklearn.linear_model import LogisticRegression

rows = json.loads(pathlib.Path("{DATA}").read_text())
features, labels = [row[:2] for row in rows], [row[2] for row in rows]
if sys.argv[1] == "train":
    params = yaml.safe_load(pathlib.Path("params.yaml").read_text())["train"]
    model = LogisticRegression(C=params["C"]).fit(features, labels)
    pathlib.Path("{MODEL}").write_bytes(pickle.dumps(model))
else:
    model = pickle.loads(pathlib.Path("{MODEL}").read_bytes())
    pathlib.Path("{METRICS}").parent.mkdir(exist_ok=True)
    accuracy = float(model.score(features, labels))
    pathlib.Path("{METRICS}").write_text(json.dumps({{"accuracy": accuracy}}))
"""

DVC_YAML = {
    "stages": {
        "train": {
            "cmd": "python pipeline.py train",
            "deps": ["pipeline.py", DATA],
            "params": ["train"],
            "outs": [MODEL],
        },
        "evaluate": {
            "cmd": "python pipeline.py evaluate",
            "deps": ["pipeline.py", MODEL, DATA],
            "metrics": [{METRICS: {"cache": False}}],
        },
    },
}


def model_table(model: str, example: str) -> str:
    """`[tool.branchflow.model]` for a pickled LogisticRegression at `model` over 2 features."""
    return f"""\
[tool.branchflow.model]
flavor = "sklearn"
artifacts = {{ model = "{model}" }}
input_example = "{example}"
pip_requirements = ["mlflow-skinny", "scikit-learn", "numpy"]
key_metrics = ["accuracy"]

[tool.branchflow.model.signature]
inputs = [{{ type = "tensor", tensor-spec = {{ dtype = "float64", shape = [-1, 2] }} }}]
outputs = [{{ type = "tensor", tensor-spec = {{ dtype = "int64", shape = [-1] }} }}]
"""


PYPROJECT = f"""\
[project]
name = "{NAME}"
dependencies = ["pyyaml", "scikit-learn"]  # what its Azure ML environment installs

{model_table(MODEL, EXAMPLE)}"""


def make_sklearn_repo(path: Path, cached_metrics: bool = False) -> Path:
    """`main` of a reproduced, committed project whose model is a pickled LogisticRegression.
    With `cached_metrics`, its metrics live in DVC's cache and a local default remote, not in
    git, as in DVC's example-get-started."""
    (path / "examples").mkdir(parents=True)
    np.save(path / EXAMPLE, np.array([row[:2] for row in ROWS[::2]], dtype=np.float64))
    (path / "pipeline.py").write_text(PIPELINE)
    dvc_yaml = json.loads(json.dumps(DVC_YAML))
    if cached_metrics:
        dvc_yaml["stages"]["evaluate"]["metrics"] = [METRICS]
    (path / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml, sort_keys=False))
    (path / "params.yaml").write_text(yaml.safe_dump({"train": {"C": 1.0}}))
    (path / "pyproject.toml").write_text(PYPROJECT)
    (path / ".gitignore").write_text("/mlflow.db\n/mlartifacts/\n")
    init_repo(path)
    (path / "data").mkdir()
    (path / DATA).write_text(json.dumps(ROWS))
    sh("dvc", "init", "-q", cwd=path)
    sh("dvc", "config", "core.analytics", "false", cwd=path)
    sh("dvc", "add", "-q", DATA, cwd=path)
    if cached_metrics:
        remote = path.parent / "remote"
        sh("dvc", "remote", "add", "-q", "-d", "local", str(remote), cwd=path)
    sh("dvc", "repro", "-q", cwd=path)
    if cached_metrics:
        sh("dvc", "push", "-q", cwd=path)
    sh("git", "add", "-A", cwd=path)
    sh("git", "commit", "-q", "-m", "main: the project, reproduced", cwd=path)
    return path
