"""What a pull request controls cannot run as code in the builds `init` generates: every value
from `[tool.branchflow]` and every path the project names (a pipeline's folder, a data file)
either reaches the build as data, quoted for the shell or YAML where it lands, or stops `init`
in one line naming it (exit 3, nothing written).

The generated `run:` lines are run under bash with the hostile values, with only logging
stand-ins for the tools they call on PATH: a value that escaped its quoting would run `touch`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
import yaml

from tests.conftest import branchflow, hide_ci_variables, init_repo, sh

# Each runs `touch PWNED` if the shell treats it as code, or breaks the line it sits in.
RUNS_AS_DATA = (
    "$(touch PWNED)",
    "; touch PWNED #",
    "`touch PWNED`",
    "a'b\"c 'd",
    "x && touch PWNED",
)
# Values nothing can quote: a line break ends a YAML line, GitHub evaluates `${{` anywhere.
REFUSED = ("x\ntouch PWNED", "${{ github.token }}")
TOOLS = ("dvc", "uv", "branchflow", "git", "python", "python3", "cml")  # stand-ins on PATH
MD5_EMPTY = "d41d8cd98f00b204e9800998ecf8427e"


def toml(value: str) -> str:
    return json.dumps(value)  # a JSON string is a TOML basic string


def settings(value: str) -> str:
    """`[tool.branchflow]` with `value` in every key that `init` writes into a workflow."""
    v = toml(value)
    return textwrap.dedent(f"""
        [project]
        name = "hostile"
        [tool.branchflow]
        dev_branch = {v}
        [tool.branchflow.pipelines]
        "pipelines/{value}/dvc.yaml" = "scoring"
        [tool.branchflow.model]
        flavor = "sklearn"
        artifacts = {{ model = "model.pkl" }}
        [tool.branchflow.ci]
        install = "requirements"
        requirements = [{v}]
        branchflow = ""
        renderer = {v}
        python = {v}
        env = {{ PYTHONPATH = {v} }}
        [tool.branchflow.ci.pipelines.training]
        dev_remote = {v}
        dev_pull = [{v}]
        dev_params = [{toml(f"p={value}")}]
        [tool.branchflow.ci.retrain]
        statistics = "python stats.py"
        data = {v}
        reference = {v}
        param = {v}
        """).replace(f'"pipelines/{value}/dvc.yaml"', toml(f"pipelines/{value}/dvc.yaml"))


def make_project(root: Path, pyproject: str, value: str, data: str | None = None) -> Path:
    """A DVC project whose second pipeline's folder is named `value`, and its data file after
    `data` (default: `value`)."""
    data = value if data is None else data
    folder = root / "pipelines" / value
    folder.mkdir(parents=True)
    (folder / "dvc.yaml").write_text(
        yaml.safe_dump({"stages": {"score": {"cmd": "python score.py", "deps": ["score.py"]}}})
    )
    (root / "data").mkdir()
    (root / "data" / f"{data}.csv.dvc").write_text(
        yaml.safe_dump(
            {"outs": [{"md5": MD5_EMPTY, "size": 0, "hash": "md5", "path": f"{data}.csv"}]}
        )
    )
    stage = {
        "cmd": "python train.py",
        "deps": ["train.py", f"data/{data}.csv"],
        "outs": ["model.pkl"],
        "metrics": [{"metrics.json": {"cache": False}}],
    }
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"train": stage}}))
    for script in ("train.py", f"pipelines/{value}/score.py"):
        (root / script).write_text("")
    (root / "pyproject.toml").write_text(pyproject)
    init_repo(root)
    sh("dvc", "init", "-q", cwd=root)
    sh("dvc", "config", "core.analytics", "false", cwd=root)
    sh("git", "add", "-A", cwd=root)
    sh("git", "commit", "-q", "-m", "dvc init", cwd=root)
    return root


def run_lines(github: Path) -> list[str]:
    """Every `run:` of the generated workflows and the setup action."""
    found = []
    for path in sorted(github.rglob("*.yml")):
        document = yaml.safe_load(path.read_text())
        jobs = document.get("jobs") or {"action": document.get("runs", {})}
        for job in jobs.values():
            found += [step["run"] for step in job.get("steps", []) if "run" in step]
    return found


def run_under_bash(commands: list[str], where: Path) -> list[list[str]]:
    """Run each command under bash in `where`, with logging stand-ins for the tools; the argv
    each stand-in was called with."""
    tools = where / "bin"
    tools.mkdir(parents=True)
    log = where / "argv.log"
    for tool in TOOLS:
        stand_in = tools / tool
        stand_in.write_text(
            f"#!/bin/bash\nprintf '%s\\0' {tool} \"$@\" >> {log}\nprintf '\\n' >> {log}\n"
        )
        stand_in.chmod(0o755)
    for tool in ("touch", "cat"):
        (tools / tool).symlink_to(shutil.which(tool))
    env = {"PATH": str(tools), "HOME": str(where), "DATA": "incoming", "RUNNER_TEMP": str(where)}
    for command in commands:
        subprocess.run(
            ["/bin/bash", "-c", command], cwd=where, env=env, capture_output=True, timeout=30
        )
    text = log.read_text() if log.exists() else ""
    return [line.rstrip("\0").split("\0") for line in text.split("\0\n") if line]


@pytest.mark.parametrize("value", RUNS_AS_DATA)
def test_a_hostile_value_reaches_the_builds_as_data(
    value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hide_ci_variables(monkeypatch)
    repo = make_project(tmp_path / "repo", settings(value), value)
    assert branchflow("init", cwd=repo).returncode == 0
    called = run_under_bash(run_lines(repo / ".github"), tmp_path / "sandbox")
    assert not list(tmp_path.rglob("PWNED")), "a value ran as code"
    expected = [
        ["dvc", "pull", f"data/{value}.csv.dvc"],
        ["dvc", "repro", f"pipelines/{value}/dvc.yaml"],
        ["dvc", "pull", "-r", value, value],
        ["dvc", "push", "-r", value],
        ["dvc", "exp", "run", "-S", f"p={value}"],
        ["dvc", "exp", "run", "-S", f"{value}=incoming"],
        ["uv", "pip", "install", "-r", value],
    ]
    missing = [argv for argv in expected if argv not in called]
    assert not missing, f"not called as data: {missing}"
    dev = yaml.safe_load((repo / ".github/workflows/dev.yml").read_text())
    assert dev[True]["push"]["branches"] == [value]  # PyYAML reads `on` as True
    setup = yaml.safe_load((repo / ".github/actions/setup/action.yml").read_text())
    assert setup["runs"]["steps"][0]["with"]["python-version"] == value
    retrain = yaml.safe_load((repo / ".github/workflows/retrain.yml").read_text())
    assert retrain["env"]["DATA"] == retrain["env"]["REFERENCE"] == value
    pr = yaml.safe_load((repo / ".github/workflows/pr-training.yml").read_text())
    assert pr["jobs"]["pipeline"]["env"]["PYTHONPATH"] == value
    comment = (repo / ".github/workflows/pr-comment.yml").read_text()
    steps = yaml.safe_load(comment)["jobs"]["comment"]["steps"]
    assert steps[0]["with"]["sparse-checkout"] == value


@pytest.mark.parametrize("value", REFUSED)
@pytest.mark.parametrize(
    "key",
    [
        "dev_branch",
        "ci.python",
        "ci.renderer",
        "ci.requirements",
        "ci.pipelines.training.dev_remote",
        "ci.pipelines.training.dev_params",
        "ci.retrain.param",
        "ci.lint",
    ],
)
def test_a_value_nothing_can_quote_is_refused_in_one_line(
    key: str, value: str, tmp_path: Path
) -> None:
    *tables, name = key.split(".")
    listed = name in ("requirements", "dev_params", "lint")
    section = ".".join(["tool.branchflow", *tables])
    entry = f"[{toml(value)}]" if listed else toml(value)
    text = f'[project]\nname = "x"\n[{section}]\n{name} = {entry}\n'
    (tmp_path / "pyproject.toml").write_text(text)
    init_repo(tmp_path)
    sh("dvc", "init", "-q", cwd=tmp_path)
    refused = branchflow("init", cwd=tmp_path, check=False)
    assert refused.returncode == 3 and refused.stderr.count("\n") == 1, refused.stderr
    assert name in refused.stderr and "one line of plain text" in refused.stderr
    assert not (tmp_path / ".github").exists()


@pytest.mark.parametrize("value", REFUSED)
def test_a_path_nothing_can_quote_is_refused_in_one_line(
    value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hide_ci_variables(monkeypatch)
    pipelines = f'[tool.branchflow.pipelines]\n{toml(f"pipelines/{value}/dvc.yaml")} = "scoring"\n'
    repo = make_project(tmp_path / "repo", f'[project]\nname = "x"\n{pipelines}', value, "plain")
    refused = branchflow("init", cwd=repo, check=False)
    assert refused.returncode == 3 and refused.stderr.count("\n") == 1, refused.stderr
    assert "rename it" in refused.stderr
    assert not (repo / ".github").exists() and os.listdir(repo / "pipelines") == [value]
