"""A tiny real git + DVC project whose metrics are whatever its params say: fast gate and
report tests without training a model."""

from __future__ import annotations

import posixpath
from pathlib import Path

import yaml

from tests.conftest import init_repo, sh

TRAIN = """\
import csv, json, pathlib, yaml

params = yaml.safe_load(pathlib.Path("params.yaml").read_text())["train"]
data = pathlib.Path("data/prepared.txt").read_text()
pathlib.Path("reports").mkdir(exist_ok=True)
metrics = {"model": {"f1": params["f1"], "loss": params["loss"], "rows": len(data.split())}}
pathlib.Path("reports/metrics.json").write_text(json.dumps(metrics, indent=2))
with open("reports/curve.csv", "w", newline="") as handle:
    writer = csv.writer(handle)
    writer.writerow(["step", "score"])
    writer.writerows((step, round(params["f1"] * step / 4, 4)) for step in range(5))
"""

DVC_YAML = {
    "stages": {
        "prepare": {
            "cmd": "python -c \"import shutil; shutil.copy('data/raw.txt', 'data/prepared.txt')\"",
            "deps": ["data/raw.txt"],
            "outs": ["data/prepared.txt"],
        },
        "train": {
            "cmd": "python train.py",
            "deps": ["train.py", "data/prepared.txt"],
            "params": ["train"],
            "metrics": [{"reports/metrics.json": {"cache": False}}],
            "outs": [{"reports/curve.csv": {"cache": False}}],
        },
    },
    "plots": [{"reports/curve.csv": {"x": "step", "y": "score"}}],
}

PYPROJECT = """\
[project]
name = "toy"

[tool.branchflow.gate]
key_metric = "model.f1"
lower_is_better = ["model.loss"]

[tool.branchflow.gate.min]
"model.f1" = 0.90

[tool.branchflow.gate.max]
"model.loss" = 0.5

[tool.branchflow.gate.max_drop_vs_base]
"model.f1" = 0.01
"model.loss" = 0.05

[tool.branchflow.gate.max_drop_vs_champion]
"model.f1" = 0.02
"""


def make_metrics_repo(path: Path, *, reproduce: bool = True) -> Path:
    """`main` holds the project with f1 0.96, loss 0.1; reproduced and committed if asked."""
    path.mkdir(parents=True)
    (path / "data").mkdir()
    (path / "data" / "raw.txt").write_text("a b c\n")
    (path / "train.py").write_text(TRAIN)
    (path / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    (path / "params.yaml").write_text(yaml.safe_dump({"train": {"f1": 0.96, "loss": 0.1}}))
    (path / "pyproject.toml").write_text(PYPROJECT)
    (path / ".gitignore").write_text(
        "/mlflow.db\n/mlartifacts/\n/report.md\n/report.json\n/report_files/\n"
    )
    init_repo(path)
    sh("dvc", "init", "-q", cwd=path)
    if reproduce:
        sh("dvc", "repro", "-q", cwd=path)
    sh("git", "add", "-A", cwd=path)
    sh("git", "commit", "-q", "-m", "main: the project", cwd=path)
    return path


def branch_with(repo: Path, branch: str, **train: float) -> None:
    """Check out a new `branch`, set `train` params and `dvc repro` (left uncommitted)."""
    sh("git", "checkout", "-q", "-b", branch, cwd=repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"].update(train)
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    sh("dvc", "repro", "-q", cwd=repo)


WRITE_PARAMS = """\
import json, pathlib, sys, yaml

params = yaml.safe_load(pathlib.Path("params.yaml").read_text())["train"]
out = pathlib.Path(sys.argv[1])
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps(params))
"""


def make_pipelines_repo(path: Path, folders: dict[str, dict[str, float]], gate: str = "") -> Path:
    """`main` holds one `dvc.yaml` per folder (`{folder: train params}`), each with a stage
    `train` that writes its params as the metrics file `out` names: `metrics.json` (kept in git)
    or `eval/metrics.json` (DVC-cached); reproduced and committed, with `gate` as the
    `[tool.branchflow.gate]` tables."""
    path.mkdir(parents=True)
    (path / "write.py").write_text(WRITE_PARAMS)
    (path / "pyproject.toml").write_text(f'[project]\nname = "toy"\n\n{gate}')
    for folder, params in folders.items():
        out = "eval/metrics.json" if folder == "." else "metrics.json"
        stage = {
            "cmd": f"python {posixpath.relpath('write.py', folder)} {out}",
            "deps": [posixpath.relpath("write.py", folder)],
            "params": ["train"],
            "metrics": [out if folder == "." else {out: {"cache": False}}],
        }
        (path / folder).mkdir(parents=True, exist_ok=True)
        (path / folder / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"train": stage}}))
        (path / folder / "params.yaml").write_text(yaml.safe_dump({"train": params}))
    init_repo(path)
    sh("dvc", "init", "-q", cwd=path)
    sh("dvc", "repro", "-q", "--all-pipelines", cwd=path)
    sh("git", "add", "-A", cwd=path)
    sh("git", "commit", "-q", "-m", "main: the pipelines", cwd=path)
    return path


def set_params(repo: Path, folder: str, **train: float) -> None:
    """Set `train` params in `folder`'s params.yaml and `dvc repro` every pipeline."""
    params = repo / folder / "params.yaml"
    values = yaml.safe_load(params.read_text())
    values["train"].update(train)
    params.write_text(yaml.safe_dump(values))
    sh("dvc", "repro", "-q", "--all-pipelines", cwd=repo)
