"""Several pipelines per repository: one per dvc.yaml, each with its own name and the paths its
PR build watches."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from branchflow.errors import BranchflowError
from branchflow.settings import load_settings
from branchflow.workspace.dag import read_dag
from branchflow.workspace.pipelines import (
    find_pipeline,
    find_pipelines,
    pipeline_steps,
    scope,
    watched_paths,
)
from tests.conftest import built_repo, init_repo, project_files, sh


def make_two_pipelines(repo: Path) -> Path:
    """A training pipeline at the root and an independent scoring one in a subfolder; both use
    `common.py`, and scoring reads a second `.dvc` data source."""
    files = {
        "pyproject.toml": '[project]\nname = "two"\n',
        "common.py": "SCALE = 2\n",
        "train.py": "import common\n",
        "lib/helpers/util.py": "X = 1\n",
        "params.yaml": "train:\n  lr: 0.1\n",
        "dvc.yaml": """
            stages:
              train:
                cmd: python train.py && echo model > model.txt
                deps: [train.py, common.py, lib/helpers, data/train.txt]
                params: [train.lr]
                outs: [model.txt]
        """,
        "pipelines/scoring/score.py": "import common\n",
        "pipelines/scoring/dvc.yaml": """
            stages:
              score:
                wdir: ../..
                cmd: python pipelines/scoring/score.py && cat data/batch.txt > scores.txt
                deps: [pipelines/scoring/score.py, common.py, data/batch.txt]
                outs: [scores.txt]
        """,
        "README.md": "docs\n",
        "tests/test_x.py": "def test_x(): pass\n",
    }
    for path, text in files.items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(textwrap.dedent(text).lstrip())
    sh("git", "init", "-q", cwd=repo)
    sh("dvc", "init", "-q", cwd=repo)
    for name in ("train", "batch"):
        (repo / "data").mkdir(exist_ok=True)
        (repo / f"data/{name}.txt").write_text(f"{name} rows\n")
        sh("dvc", "add", "-q", f"data/{name}.txt", cwd=repo)
    return init_repo(repo)


@pytest.fixture(scope="session")
def two_pipelines_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`make_two_pipelines`, built once per test run; copy it to change it."""
    return built_repo(tmp_path_factory, "two-pipelines", make_two_pipelines)


@pytest.fixture
def two_pipelines(two_pipelines_repo: Path, copy_repo: Callable[[Path], Path]) -> Path:
    return copy_repo(two_pipelines_repo)


def github_glob(pattern: str) -> re.Pattern[str]:
    """GitHub's `paths` filter syntax: `**` crosses folders, `*` does not."""
    parts = re.split(r"(\*\*/?|\*)", pattern)
    table = {"**": ".*", "**/": "(?:.*/)?", "*": "[^/]*"}
    return re.compile("".join(table.get(part, re.escape(part)) for part in parts))


def builds_for(root: Path, changed: str) -> set[str]:
    """The pipelines whose PR build a change to `changed` starts."""
    dag, settings = read_dag(root), load_settings(root)
    return {
        pipeline.name
        for pipeline in find_pipelines(root, settings)
        if any(
            github_glob(path).fullmatch(changed)
            for path in watched_paths(root, dag, pipeline, settings.model)
        )
    }


def test_each_dvc_yaml_is_a_pipeline_named_by_its_folder(two_pipelines: Path) -> None:
    repo = two_pipelines
    found = find_pipelines(repo, load_settings(repo))
    assert [(p.name, p.dvcfile) for p in found] == [
        ("training", "dvc.yaml"),
        ("scoring", "pipelines/scoring/dvc.yaml"),
    ]
    steps = pipeline_steps(read_dag(repo), found[1])
    assert [s.stage for s in steps] == ["pipelines/scoring/dvc.yaml:score"]
    assert find_pipeline(repo, load_settings(repo), None).name == "training"
    with pytest.raises(BranchflowError, match="no pipeline 'score'; pipelines: training, scoring"):
        find_pipeline(repo, load_settings(repo), "score")


def test_a_change_starts_only_the_builds_of_the_pipelines_it_can_change(
    two_pipelines: Path,
) -> None:
    repo = two_pipelines
    expected = {
        "train.py": {"training"},
        "params.yaml": {"training"},
        "data/train.txt.dvc": {"training"},
        "lib/helpers/util.py": {"training"},
        "dvc.yaml": {"training"},
        "dvc.lock": {"training"},
        "pipelines/scoring/score.py": {"scoring"},
        "pipelines/scoring/dvc.yaml": {"scoring"},
        "data/batch.txt.dvc": {"scoring"},
        "common.py": {"training", "scoring"},
        "pyproject.toml": {"training", "scoring"},
        "README.md": set(),
        "tests/test_x.py": set(),
    }
    assert {path: builds_for(repo, path) for path in expected} == expected


def test_the_example_has_one_pipeline_that_watches_what_it_runs() -> None:
    root = Path(__file__).resolve().parents[1]
    settings = load_settings(root)
    pipeline = find_pipeline(root, settings, "training")
    watched = watched_paths(root, read_dag(root), pipeline, settings.model)
    assert {"dvc.yaml", "dvc.lock", "params.yaml", "data.dvc", "uv.lock"} <= set(watched)
    # It registers the model, so it also watches the model's package: all of src/badpixels
    # (code_paths), which holds every stage's code, and the input example.
    assert {"src/badpixels/**", "data/examples/frames.npy"} <= set(watched)
    assert not [p for p in watched if p.startswith("src/badpixels/") and not p.endswith("**")]
    assert not [p for p in watched if p.startswith(("tests/", "docs/", "benchmarks/"))]
    assert set(watched) <= {*project_files(), *(p for p in watched if p.endswith("/**"))}
    judged = scope(root, settings, read_dag(root), None)  # the model's pipeline
    assert judged.metrics_files == ("reports/metrics.json",)
    assert judged.gate == settings.gate
    assert judged.has_model
    assert [source.path for source in judged.data] == ["data/raw/toy"]
    assert judged.lockfiles == ("dvc.lock",)  # the report's stage table: its own stages
    scoring = scope(root, settings, read_dag(root), "scoring")
    assert scoring.metrics_files == ("data/scoring/metrics.json",)
    assert scoring.gate == settings.gates["scoring"]
    assert not scoring.has_model  # no champion: it registers nothing
    assert [source.path for source in scoring.data] == ["data/batches/toy"]
    assert scoring.lockfiles == ("pipelines/scoring/dvc.lock",)


def test_a_pipeline_without_metrics_has_nothing_to_judge(two_pipelines: Path) -> None:
    repo = two_pipelines
    with pytest.raises(BranchflowError, match=r"pipelines/scoring/dvc\.yaml declares no metrics"):
        scope(repo, load_settings(repo), read_dag(repo), "scoring")


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('"pipelines/scoring/dvc.yaml" = "batch"', None),
        ('"pipelines/scoring/dvc.yaml" = "training"', "several dvc.yaml files are the pipeline"),
        ('"elsewhere/dvc.yaml" = "x"', "names elsewhere/dvc.yaml, which git does not know"),
        ('"pipelines/scoring/dvc.yaml" = "Bad Name"', "must be lowercase letters"),
        ('"pipelines/scoring/params.yaml" = "x"', "maps a dvc.yaml path to a name"),
    ],
)
def test_pipelines_may_be_named_in_config(
    two_pipelines: Path, table: str, message: str | None
) -> None:
    repo = two_pipelines
    with (repo / "pyproject.toml").open("a") as pyproject:
        pyproject.write(f"\n[tool.branchflow.pipelines]\n{table}\n")
    if message is None:
        names = [p.name for p in find_pipelines(repo, load_settings(repo))]
        assert names == ["training", "batch"]
        return
    with pytest.raises(BranchflowError, match=message):
        find_pipelines(repo, load_settings(repo))


def test_each_pipeline_reports_only_its_own_plots(tmp_path: Path) -> None:
    """Top-level plots by id and by path, and a stage's plot output, rendered by DVC and
    vl-convert: the report of one pipeline draws none of the other's."""
    from branchflow.report.plots import render_plots

    files = {
        "curve.csv": "x,y\n1,2\n2,3\n",
        "dvc.yaml": """
            stages:
              train:
                cmd: >-
                  printf 'x,y\\n1,1\\n2,4\\n' > loss.csv && echo '{"a": 1}' > metrics.json
                plots: [loss.csv]
                metrics: [{metrics.json: {cache: false}}]
            plots:
              - curve:
                  x: x
                  y: {curve.csv: y}
        """,
        "pipelines/scoring/hist.csv": "x,y\n1,5\n2,6\n",
        "pipelines/scoring/dvc.yaml": """
            plots:
              - hist.csv:
                  x: x
                  y: y
        """,
    }
    for path, text in files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(textwrap.dedent(text).lstrip())
    sh("git", "init", "-q", cwd=tmp_path)
    sh("dvc", "init", "-q", cwd=tmp_path)
    sh("dvc", "repro", "-q", cwd=tmp_path)
    init_repo(tmp_path)
    settings, dag = load_settings(tmp_path), read_dag(tmp_path)
    training = scope(tmp_path, settings, dag, "training").plots
    assert training == ("loss.csv", "curve")
    plots, errors = render_plots(tmp_path, None, tmp_path / "out", {}, training)
    assert len(plots) == 2 and errors == []
    everything, _ = render_plots(tmp_path, None, tmp_path / "all", {})
    assert len(everything) == 3  # and pipelines/scoring/hist.csv is left out of training's


DVCLIVE_STAGE = """
stages:
  train:
    cmd: python train.py
    deps: [train.py]
    outs: [dvclive]
metrics:
  - dvclive/metrics.json
"""
DVCLIVE_TRAIN = """import json, pathlib
folder = pathlib.Path("dvclive")
folder.mkdir(exist_ok=True)
(folder / "metrics.json").write_text(json.dumps({"f1": 0.91, "loss": 0.2}))
"""


def test_top_level_metrics_as_dvclive_declares_them_are_reported_and_gated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dvclive writes `metrics:` at the top of dvc.yaml, inside a cached output: the pipeline
    reports and gates them, and init generates its report, gate and comment."""
    from tests.conftest import branchflow, hide_ci_variables

    hide_ci_variables(monkeypatch, "MLFLOW_")
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "dvc.yaml").write_text(textwrap.dedent(DVCLIVE_STAGE).lstrip())
    (repo / "train.py").write_text(DVCLIVE_TRAIN)
    (repo / "pyproject.toml").write_text(
        '[project]\nname = "live"\n[tool.branchflow.gate.min]\nf1 = 0.95\n'
    )
    sh("git", "init", "-q", cwd=repo)
    sh("dvc", "init", "-q", cwd=repo)
    sh("dvc", "repro", "-q", cwd=repo)
    init_repo(repo)
    judged = scope(repo, load_settings(repo), read_dag(repo), "training")
    assert judged.metrics_files == ("dvclive/metrics.json",)
    gate = branchflow("gate", "--pipeline", "training", cwd=repo, check=False)
    assert gate.returncode == 1 and "`f1` is 0.9100, below the floor 0.9500" in gate.stdout
    assert branchflow("init", cwd=repo).returncode == 0
    workflows = {p.name for p in (repo / ".github/workflows").glob("*.yml")}
    assert "pr-comment.yml" in workflows  # the PR build reports, so the comment job listens
    build = (repo / ".github/workflows/pr-training.yml").read_text()
    assert "branchflow gate --pipeline training" in build
