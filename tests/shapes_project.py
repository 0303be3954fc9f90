"""A tiny real git + DVC project of the shapes branchflow must handle without knowing them: two
`dvc.yaml` in subfolders, a `foreach` stage, params from a second file, a stage with `wdir`,
a requirements file instead of a pyproject `[project]`, and a scikit-learn model."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np

from tests.conftest import init_repo, sh
from tests.sklearn_project import model_table

TRAIN = "pipelines/train/dvc.yaml"
SCORE = "pipelines/score/dvc.yaml"
MODEL = "pipelines/train/model.pkl"
ROWS = [[0.0, 0.1, 0], [0.2, 0.0, 0], [0.1, 0.3, 0], [0.9, 1.0, 1], [1.0, 0.8, 1], [0.8, 0.9, 1]]
BATCH = [[0.1, 0.2, 0], [0.9, 0.7, 1], [0.3, 0.1, 0], [0.7, 0.9, 1]]

FILES = {
    "requirements.txt": "pyyaml\nscikit-learn\n",
    "src/prepare.py": """
        import json, sys, yaml
        scale = yaml.safe_load(open("params.yaml"))["prepare"]["scale"]
        split = yaml.safe_load(open("config/split.yaml"))["split"]
        rows = json.load(open("../../data/rows.json"))
        half = rows[::2] if sys.argv[1] == "even" else rows[1::2]
        kept = half[: max(1, int(len(half) * split * 2))]
        json.dump([[x * scale, y * scale, label] for x, y, label in kept], open(sys.argv[2], "w"))
    """,
    "src/train.py": """
        import json, pickle, yaml
        from sklearn.linear_model import LogisticRegression
        rows = json.load(open("prepared/even.json")) + json.load(open("prepared/odd.json"))
        c = yaml.safe_load(open("params.yaml"))["train"]["C"]
        model = LogisticRegression(C=c).fit([r[:2] for r in rows], [r[2] for r in rows])
        pickle.dump(model, open("model.pkl", "wb"))
        accuracy = float(model.score([r[:2] for r in rows], [r[2] for r in rows]))
        json.dump({"accuracy": accuracy}, open("metrics.json", "w"))
    """,
    "src/score.py": """
        import json, os, pickle
        model = pickle.load(open("pipelines/train/model.pkl", "rb"))
        rows = json.load(open("data/batch.json"))
        os.makedirs("scores", exist_ok=True)
        agreement = float(model.score([r[:2] for r in rows], [r[2] for r in rows]))
        json.dump({"agreement": agreement}, open("scores/metrics.json", "w"))
    """,
    "pipelines/train/params.yaml": "prepare:\n  scale: 1.0\ntrain:\n  C: 1.0\n",
    "pipelines/train/config/split.yaml": "split: 0.5\n",
    TRAIN: """
        stages:
          prepare:
            foreach: [even, odd]
            do:
              cmd: mkdir -p prepared && python ../../src/prepare.py ${item} prepared/${item}.json
              deps: [../../src/prepare.py, ../../data/rows.json]
              params: [prepare.scale, {config/split.yaml: [split]}]
              outs:
                - prepared/${item}.json
          train:
            cmd: python ../../src/train.py
            deps: [../../src/train.py, prepared/even.json, prepared/odd.json]
            params: [train.C]
            outs: [model.pkl]
            metrics: [metrics.json]
    """,
    SCORE: """
        stages:
          score:
            wdir: ../..
            cmd: python src/score.py
            deps: [src/score.py, pipelines/train/model.pkl, data/batch.json]
            metrics: [scores/metrics.json: {cache: false}]
    """,
    "pyproject.toml": model_table(MODEL, "examples/rows.npy")
    + """
[tool.branchflow.gate.max_drop_vs_base]
accuracy = 0.5

[tool.branchflow.gates.score.min]
agreement = 0.5
""",
}


def make_shapes_repo(path: Path) -> Path:
    """`main` of the project, reproduced and committed, its data pushed to a local remote."""
    for name, text in FILES.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(textwrap.dedent(text).lstrip())
    (path / "examples").mkdir()
    np.save(path / "examples/rows.npy", np.array([row[:2] for row in ROWS[:2]]))
    init_repo(path)
    (path / "data").mkdir()
    (path / "data/rows.json").write_text(json.dumps(ROWS))
    (path / "data/batch.json").write_text(json.dumps(BATCH))
    dvc_project(path, "data/rows.json", "data/batch.json")
    sh("dvc", "repro", "-q", TRAIN, SCORE, cwd=path)
    sh("dvc", "push", "-q", cwd=path)
    sh("git", "add", "-A", cwd=path)
    sh("git", "commit", "-q", "-m", "main: the project, reproduced", cwd=path)
    return path


def dvc_project(path: Path, *data: str) -> None:
    """`dvc init` with analytics off and a local default remote beside the repository, and
    `data` added as DVC data sources."""
    sh("dvc", "init", "-q", cwd=path)
    sh("dvc", "config", "core.analytics", "false", cwd=path)
    sh("dvc", "remote", "add", "-q", "-d", "local", str(path.parent / "remote"), cwd=path)
    for source in data:
        sh("dvc", "add", "-q", source, cwd=path)
