"""Exit codes: 0 passed, 1 a verdict said no, 2 usage error, 3 tool error, so that CI can tell
a rejected change from a broken build. Real inputs on small temporary projects."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner, Result

from branchflow.cli import main
from branchflow.errors import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TOOL,
    EXIT_USAGE,
    EXIT_VERDICT,
)
from tests.conftest import hide_ci_variables, init_repo, sh
from tests.metrics_project import branch_with


def invoke(repo: Path, monkeypatch: pytest.MonkeyPatch, *args: str) -> Result:
    """`branchflow ARGS` in `repo`; stdout and stderr kept apart."""
    monkeypatch.chdir(repo)
    return CliRunner().invoke(main, list(args))


def assert_one_line_error(result: Result, *fragments: str) -> None:
    assert result.exit_code == EXIT_TOOL, result.output
    assert "Traceback" not in result.output
    assert result.stderr.startswith("error: "), result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr


def test_the_codes_are_distinct_and_listed_in_the_help() -> None:
    assert (EXIT_OK, EXIT_VERDICT, EXIT_USAGE, EXIT_TOOL) == (0, 1, 2, 3)
    assert click.UsageError.exit_code == EXIT_USAGE  # click's own usage errors
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == EXIT_OK
    epilog = result.output.partition("Exit status:\n")[2].splitlines()
    codes = [line.split()[0] for line in epilog if line.split() and line.split()[0].isdigit()]
    assert codes == ["0", "1", "2", "3", str(EXIT_INTERRUPTED)]


# --- gate: 1 is a failed gate, 3 a gate that could not run ---------------------------------


@pytest.mark.e2e
def test_a_failing_gate_exits_1_and_a_passing_one_0(
    metrics_repo: Path, copy_repo, monkeypatch: pytest.MonkeyPatch
) -> None:
    hide_ci_variables(monkeypatch, "MLFLOW_TRACKING_URI")
    repo = copy_repo(metrics_repo)
    branch_with(repo, "worse", f1=0.93)  # 0.03 worse than main; 0.01 allowed
    failed = invoke(repo, monkeypatch, "gate", "--base", "main")
    assert failed.exit_code == EXIT_VERDICT, failed.output
    assert failed.stdout.splitlines()[0] == "gate failed: 1 of 4 rules failed"
    assert failed.stderr == ""

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["f1"] = 0.96
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    sh("dvc", "repro", "-q", cwd=repo)
    passed = invoke(repo, monkeypatch, "gate", "--base", "main")
    assert passed.exit_code == EXIT_OK, passed.output


def test_an_invalid_gate_table_exits_3_in_one_line_naming_the_file(
    metrics_repo: Path, copy_repo, monkeypatch: pytest.MonkeyPatch
) -> None:
    hide_ci_variables(monkeypatch, "MLFLOW_TRACKING_URI")
    repo = copy_repo(metrics_repo)
    pyproject = repo / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace("key_metric =", "key_metrik ="))
    result = invoke(repo, monkeypatch, "gate", "--base", "main")
    assert_one_line_error(result, str(pyproject), "unknown key 'key_metrik'")
    assert result.stdout == ""


def test_a_base_ref_that_does_not_exist_exits_3(
    metrics_repo: Path, copy_repo, monkeypatch: pytest.MonkeyPatch
) -> None:
    hide_ci_variables(monkeypatch, "MLFLOW_TRACKING_URI")
    repo = copy_repo(metrics_repo)
    result = invoke(repo, monkeypatch, "gate", "--base", "no-such-branch")
    assert_one_line_error(result, "no-such-branch")


# --- usage errors are click's own: 2 ------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["gate", "--no-such-option"], "No such option"),  # click < 8.4 quotes it otherwise
        (["context", "--format", "xml"], "Invalid value for '--format'"),
        (["drift", "--current", "current.json"], "Missing option '--reference'"),
        (["no-such-command"], "No such command 'no-such-command'"),
    ],
)
def test_usage_errors_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    result = invoke(tmp_path, monkeypatch, *args)
    assert result.exit_code == EXIT_USAGE, result.output
    assert message in result.stderr
    assert result.stdout == ""


# A stage module that imports a local helper module.
APP = {
    "data.txt": "1\n",
    "src/app/__init__.py": "",
    "src/app/helpers.py": "def double(x: int) -> int:\n    return 2 * x\n",
    "src/app/train.py": "import sys\n\nfrom app.helpers import double\n\nprint(double(2))\n",
}


@pytest.fixture
def check_repo(tmp_path: Path) -> Path:
    """A git + DVC project whose stage `train` runs app/train.py, which imports helpers.py."""
    repo = tmp_path / "repo"
    for name, text in APP.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    stage = {"cmd": "python -m app.train data.txt", "deps": ["data.txt", "src/app/train.py"]}
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"train": stage}}))
    sh("git", "init", "-q", "-b", "main", cwd=repo)
    sh("dvc", "init", "-q", cwd=repo)
    return init_repo(repo)


def test_check_with_an_undeclared_import_exits_1_and_0_once_declared(
    check_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = invoke(check_repo, monkeypatch, "check")
    assert result.exit_code == EXIT_VERDICT, result.output
    assert "src/app/helpers.py" in result.stdout
    assert result.stderr == ""

    dvc_yaml = check_repo / "dvc.yaml"
    stages = yaml.safe_load(dvc_yaml.read_text())
    stages["stages"]["train"]["deps"] += ["src/app/__init__.py", "src/app/helpers.py"]
    dvc_yaml.write_text(yaml.safe_dump(stages))
    result = invoke(check_repo, monkeypatch, "check")
    assert result.exit_code == EXIT_OK, result.output


def test_check_on_a_malformed_dvc_yaml_exits_3(
    check_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (check_repo / "dvc.yaml").write_text("stages:\n  train:\n    cmd: [unclosed\n")
    assert_one_line_error(invoke(check_repo, monkeypatch, "check"), "cannot read the DVC pipeline")


# --- drift: found drift is a verdict only with --fail-on-drift ------------------------------


@pytest.fixture
def stats(tmp_path: Path) -> Path:
    (tmp_path / "reference.json").write_text(json.dumps({"noise_sigma": 1.0, "mean": 0.5}))
    (tmp_path / "current.json").write_text(json.dumps({"noise_sigma": 2.0, "mean": 0.5}))
    return tmp_path


def test_drift_exits_1_with_fail_on_drift_and_3_on_a_missing_file(
    stats: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GITHUB_OUTPUT", raising=False)
    args = ["drift", "--reference", "reference.json", "--current", "current.json"]
    assert invoke(stats, monkeypatch, *args).exit_code == EXIT_OK  # reported, not failed
    failed = invoke(stats, monkeypatch, *args, "--fail-on-drift")
    assert failed.exit_code == EXIT_VERDICT, failed.output
    assert "drift: noise_sigma" in failed.stdout.splitlines()

    (stats / "current.json").unlink()
    missing = invoke(stats, monkeypatch, *args, "--fail-on-drift")
    assert_one_line_error(missing, "current.json", "not found")


# --- what is neither a verdict nor a BranchflowError must not exit 1 -------------------------


def test_an_unexpected_exception_is_a_tool_error_with_its_traceback(
    stats: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: object) -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr("branchflow.drift.check_drift", broken)
    result = invoke(stats, monkeypatch, "drift", "--reference", "a.json", "--current", "b.json")
    assert result.exit_code == EXIT_TOOL, result.output
    assert result.stderr.startswith("Traceback (most recent call last):")
    assert "ZeroDivisionError: a bug" in result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.startswith("error: unexpected ZeroDivisionError (a bug in branchflow ")
    assert not isinstance(result.exception, ZeroDivisionError)  # handled, not propagated


@pytest.mark.parametrize(
    ("raised", "code", "message"),
    [
        (SystemExit(1), EXIT_TOOL, "error: stopped by an unexpected sys.exit(1)\n"),
        (KeyboardInterrupt(), EXIT_INTERRUPTED, "\nAborted!\n"),
    ],
)
def test_a_library_exit_or_an_interrupt_is_not_a_verdict(
    stats: Path, monkeypatch: pytest.MonkeyPatch, raised: BaseException, code: int, message: str
) -> None:
    def stop(*_: object) -> None:
        raise raised

    monkeypatch.setattr("branchflow.drift.check_drift", stop)
    result = invoke(stats, monkeypatch, "drift", "--reference", "a.json", "--current", "b.json")
    assert (result.exit_code, result.stderr) == (code, message)


# --- the installed command, as CI runs it ----------------------------------------------------


@pytest.mark.parametrize(
    ("args", "code"), [(["gate", "--no-such-option"], EXIT_USAGE), (["context"], EXIT_TOOL)]
)
def test_the_installed_command_exits_with_the_same_codes(
    tmp_path: Path, args: list[str], code: int
) -> None:
    executable = shutil.which("branchflow")
    assert executable, "branchflow is not installed on PATH"
    result = subprocess.run(
        [executable, *args], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("uri", ["ftp://models.example/x", "s3://bucket/mlruns", "./mlruns"])
def test_a_tracking_uri_mlflow_cannot_use_is_a_one_line_error(
    metrics_repo: Path, monkeypatch: pytest.MonkeyPatch, uri: str
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    result = invoke(metrics_repo, monkeypatch, "history")
    assert_one_line_error(result, f"MLFLOW_TRACKING_URI={uri}: unsupported scheme", "http://")
