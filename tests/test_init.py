"""`branchflow init` on projects it has never seen: detection, idempotence, `--check`, path
filters, linters on the generated workflows and, end to end, a project from `init` through its
PR builds, register, report, gate, promote and `azureml compile`: real git, DVC and MLflow."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import mlflow
import pytest
import yaml

from branchflow import __version__
from branchflow.ci.init import detect
from tests.conftest import ROOT, branchflow, hide_ci_variables, init_repo, sh
from tests.sklearn_project import DATA, ROWS, make_sklearn_repo
from tests.test_pipelines import github_glob
from tests.test_remote import azurite, connection_string  # noqa: F401 (a fixture)
from tests.test_workflows import (
    actionlint,
    checkout_pull_request,
    github_env,
    load,
    run_job,
    zizmor,
)

README = ROOT / "README.md"
ADOPT = "## Adopt branchflow in your project"
AUDITOR = (("--persona", "auditor"),)  # zizmor's strictest persona
PINNED = f'branchflow = "branchflow[report,azure]=={__version__}"'  # what init detects here


@pytest.fixture(scope="module")
def toolkit_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """branchflow's wheel, as the comment jobs of a foreign project install it."""
    out = tmp_path_factory.mktemp("wheel")
    sh(sys.executable, "-m", "uv", "build", "-q", "--package", "branchflow", "--wheel",
       "--out-dir", str(out), cwd=ROOT)  # fmt: skip
    (wheel,) = out.glob("branchflow-*.whl")
    return wheel


@pytest.fixture
def shapes(shapes_repo: Path) -> Path:
    """The shapes project on `main`, before `init`. Copy it before changing it."""
    return shapes_repo


@pytest.fixture
def initialised(shapes: Path, copy_repo: Callable[[Path], Path]) -> Path:
    """A copy of the shapes project after `branchflow init`, committed."""
    repo = copy_repo(shapes)
    branchflow("init", cwd=repo)
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-q", "-m", "CI from branchflow init", cwd=repo)
    return repo


def init(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return branchflow("init", *args, cwd=repo, check=False)


def workflows(repo: Path) -> dict[str, dict]:
    return {p.name: load(p) for p in sorted((repo / ".github/workflows").glob("*.yml"))}


def started_builds(repo: Path, changed: str) -> set[str]:
    """The PR builds whose path filters a change to `changed` matches."""
    return {
        name
        for name, workflow in workflows(repo).items()
        if any(
            github_glob(p).fullmatch(changed)
            for p in (workflow["on"].get("pull_request") or {}).get("paths", [])
        )
    }


def test_init_detects_writes_and_then_changes_nothing(shapes: Path, copy_repo) -> None:
    repo = copy_repo(shapes)
    first = init(repo)
    assert first.returncode == 0, first.stderr
    written = {line.split(" ", 1)[1] for line in first.stdout.splitlines()}
    assert {".github/workflows/pr-train.yml", ".github/workflows/pr-score.yml"} <= written
    assert {"pyproject.toml", ".gitignore", ".github/actions/setup/action.yml"} <= written
    settings = yaml.safe_load(json.dumps(_branchflow_table(repo)))
    assert (
        settings["base_name"] == "repo"
    )  # no [project].name: the name no longer hangs on the folder
    assert settings["ci"] == {
        "install": "requirements",
        "requirements": ["requirements.txt"],
        "branchflow": f"branchflow[report,azure]=={__version__}",
        "lint": [],
        "test": [],
    }
    ignored = (repo / ".gitignore").read_text().splitlines()
    assert {"/mlflow.db", "/mlartifacts/", "/report_files/", "/report.json"} <= set(ignored)
    assert init(repo).stdout == "nothing to change\n"
    checked = init(repo, "--check")
    assert checked.returncode == 0 and checked.stdout.startswith("all "), checked.stderr


URL = "git+https://github.com/branchflow/branchflow@0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize(
    ("pinned", "renderer"),
    [
        ("branchflow[report,azure]==0.3.1", "branchflow==0.3.1"),
        (f"branchflow[report] @ {URL}#subdirectory=packages/branchflow", None),
    ],
)
def test_the_builds_and_the_comment_job_install_one_branchflow(
    initialised: Path, pinned: str, renderer: str | None
) -> None:
    """The setup action installs `ci.branchflow`; the comment job the same, without extras; a
    hand edit of either is a diff `init --check` reports."""
    repo = initialised
    pyproject = repo / "pyproject.toml"
    current = _branchflow_table(repo)["ci"]["branchflow"]
    pyproject.write_text(pyproject.read_text().replace(current, pinned))
    assert init(repo).returncode == 0
    setup = load(repo / ".github/actions/setup/action.yml")["runs"]["steps"]
    runs = [shlex.split(step["run"]) for step in setup if "run" in step]
    assert ["uv", "pip", "install", pinned] in runs
    comment = load(repo / ".github/workflows/pr-comment.yml")
    (installed,) = [
        s["env"]["RENDERER"] for s in steps_of(comment) if "RENDERER" in s.get("env", {})
    ]
    assert installed == (renderer or f"branchflow @ {URL}#subdirectory=packages/branchflow")
    path = repo / ".github/workflows/pr-comment.yml"
    path.write_text(path.read_text().replace(installed, "branchflow==9.9.9"))
    checked = init(repo, "--check")
    assert checked.returncode == 1 and "branchflow==9.9.9" in checked.stdout


def test_a_project_whose_install_brings_branchflow_without_a_lock_renders_with_this_version(
    initialised: Path,
) -> None:
    """`branchflow = ""` (the project's own install brings it) and no uv.lock to read the
    version from: the comment job installs the branchflow that ran init, and init says so."""
    pyproject = initialised / "pyproject.toml"
    current = _branchflow_table(initialised)["ci"]["branchflow"]
    pyproject.write_text(pyproject.read_text().replace(f'"{current}"', '""'))
    assert not (initialised / "uv.lock").exists()
    assert init(initialised).returncode == 0
    comment = load(initialised / ".github/workflows/pr-comment.yml")
    (installed,) = [
        s["env"]["RENDERER"] for s in steps_of(comment) if "RENDERER" in s.get("env", {})
    ]
    assert installed == f"branchflow=={__version__}"


def steps_of(workflow: dict) -> list[dict]:
    return [step for job in workflow["jobs"].values() for step in job.get("steps", [])]


def test_the_first_init_of_a_project_without_pyproject_passes_its_own_check(
    tmp_path: Path,
) -> None:
    """init writes pyproject.toml, so the PR builds watch it from the first run: init, commit,
    `init --check` passes (DVC's example-get-started has no pyproject.toml either)."""
    stage = "stages:\n  a:\n    cmd: echo 1 > a.txt\n    outs: [a.txt]\n"
    repo = init_repo(write(tmp_path / "repo/dvc.yaml", stage).parent)
    sh("dvc", "init", "-q", cwd=repo)
    assert init(repo).returncode == 0
    assert (
        "pyproject.toml"
        in load(repo / ".github/workflows/pr-training.yml")["on"]["pull_request"]["paths"]
    )
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-qm", "CI from branchflow init", cwd=repo)
    checked = init(repo, "--check")
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_command_run_in_a_subfolder_acts_on_the_project(
    shapes: Path, copy_repo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From `pipelines/train`, `context` names the project (not the folder) and `init --check`
    checks the project's files, as they do from the root."""
    hide_ci_variables(monkeypatch)
    repo = copy_repo(shapes)
    assert init(repo).returncode == 0
    names = [
        json.loads(branchflow("context", cwd=folder).stdout)["names"]
        for folder in (repo, repo / "pipelines/train")
    ]
    assert names[0] == names[1] and names[0]["model"].endswith("_repo_main")
    assert init(repo / "pipelines/train", "--check").returncode == 0


def test_init_never_overwrites_a_file_the_project_wrote(shapes: Path, copy_repo) -> None:
    """The project's own pr.yml and dependabot.yml are left byte for byte, each named in one
    line; everything else is written, and after a commit `init --check` passes."""
    repo = copy_repo(shapes)
    own = {
        ".github/workflows/pr.yml": "name: ours\non: push\njobs: {}\n",
        ".github/dependabot.yml": "version: 2\nupdates: []\n",
    }
    for path, text in own.items():
        write(repo / path, text)
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-qm", "the project's own CI", cwd=repo)
    first = init(repo)
    assert first.returncode == 0, first.stderr
    assert {path: (repo / path).read_text() for path in own} == own
    kept = [line for line in first.stdout.splitlines() if line.startswith("kept ")]
    assert [line.split(":")[0] for line in kept] == [f"kept {path}" for path in sorted(own)]
    assert (repo / ".github/workflows/pr-train.yml").is_file()
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-qm", "CI from branchflow init", cwd=repo)
    checked = init(repo, "--check")
    assert checked.returncode == 0, checked.stdout + checked.stderr


def _branchflow_table(repo: Path) -> dict:
    import tomllib

    return tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["branchflow"]


def test_check_fails_on_a_hand_edit_or_a_config_change_and_init_repairs(initialised: Path) -> None:
    pr = initialised / ".github/workflows/pr.yml"
    pr.write_text(pr.read_text().replace("branchflow check", "true"))
    checked = init(initialised, "--check")
    assert checked.returncode == 1
    assert (
        "+++ b/.github/workflows/pr.yml" in checked.stdout
        and "+        run: branchflow check" in checked.stdout
    )
    assert checked.stderr.count("\n") == 1 and "run `branchflow init`" in checked.stderr
    pyproject = initialised / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace("lint = []", 'lint = ["ruff check"]'))
    assert init(initialised, "--check").returncode == 1
    assert init(initialised).stdout.splitlines() == ["wrote .github/workflows/pr.yml"]
    checks = workflows(initialised)["pr.yml"]["jobs"]["checks"]["steps"]
    assert {"run": "ruff check"} in checks and {
        "run": "branchflow check",
        "name": checks[3]["name"],
    } in checks
    assert init(initialised, "--check").returncode == 0


def test_a_removed_pipeline_loses_its_build_and_hand_written_workflows_stay(
    initialised: Path,
) -> None:
    own = initialised / ".github/workflows/nightly.yml"
    own.write_text("name: nightly\non: workflow_dispatch\njobs: {}\n")
    sh("git", "rm", "-q", "-r", "pipelines/score", cwd=initialised)
    changed = init(initialised).stdout.splitlines()
    assert "removed .github/workflows/pr-score.yml" in changed
    assert own.is_file()
    comment = workflows(initialised)["pr-comment.yml"]
    assert comment["on"]["workflow_run"]["workflows"] == ["pr-train"]


@pytest.mark.parametrize(
    ("changed", "builds"),
    [
        # score reads train's model, so what train reads starts both builds
        ("pipelines/train/config/split.yaml", {"pr-train.yml", "pr-score.yml"}),
        ("pipelines/train/params.yaml", {"pr-train.yml", "pr-score.yml"}),
        ("src/train.py", {"pr-train.yml", "pr-score.yml"}),
        ("data/rows.json.dvc", {"pr-train.yml", "pr-score.yml"}),
        ("pipelines/train/dvc.yaml", {"pr-train.yml", "pr-score.yml"}),
        ("pipelines/score/dvc.yaml", {"pr-score.yml"}),
        ("src/score.py", {"pr-score.yml"}),  # the wdir stage's code
        ("data/batch.json.dvc", {"pr-score.yml"}),
        ("requirements.txt", {"pr-train.yml", "pr-score.yml"}),
        ("README.md", set()),
    ],
)
def test_a_change_starts_only_the_builds_of_the_pipelines_it_can_change(
    initialised: Path, changed: str, builds: set[str]
) -> None:
    assert started_builds(initialised, changed) == builds


@pytest.mark.parametrize("project", ["shapes", "sklearn"])
def test_the_generated_workflows_pass_actionlint_and_zizmor(
    project: str, shapes: Path, sklearn_repo: Path, copy_repo
) -> None:
    repo = copy_repo(shapes if project == "shapes" else sklearn_repo)
    branchflow("init", cwd=repo)
    github = repo / ".github"
    workflows = sorted((github / "workflows").glob("*.yml"))
    assert_lints_clean(github, workflows, personas=((), ("--persona", "auditor")))


def test_the_builds_take_the_projects_env_secrets_and_setup(initialised: Path) -> None:
    """`[tool.branchflow.ci] env`, `secrets` and `setup` reach every job that runs a pipeline
    (secrets only those in an environment) and the setup action; the linters stay clean."""
    pyproject = initialised / "pyproject.toml"
    table = "env = { PYTHONPATH = 'src' }\nsecrets = ['AWS_ROLE_ARN']\n"
    table += "setup = ['sudo apt-get update']\n"
    pyproject.write_text(pyproject.read_text().replace("lint = []\n", f"lint = []\n{table}"))
    assert init(initialised).returncode == 0
    github = initialised / ".github"
    secret = "${{ secrets.AWS_ROLE_ARN }}"
    for name, workflow in workflows(initialised).items():
        for job_name, job in workflow["jobs"].items():
            runs = " ".join(step.get("run", "") for step in job.get("steps", []))
            env = job.get("env", {})
            if "dvc repro" in runs or "dvc exp run" in runs or "azureml submit" in runs:
                assert env.get("PYTHONPATH") == "src", (name, job_name)
                assert env.get("AWS_ROLE_ARN") == secret, (name, job_name)
            if "environment" not in job:
                assert "AWS_ROLE_ARN" not in env, (name, job_name)
    assert workflows(initialised)["pr.yml"]["jobs"]["checks"]["env"] == {"PYTHONPATH": "src"}
    setup = load(github / "actions/setup/action.yml")["runs"]["steps"]
    assert [step.get("run") for step in setup].index("sudo apt-get update") == 1
    assert_lints_clean(github, sorted((github / "workflows").glob("*.yml")))


@pytest.mark.parametrize(
    ("cloud", "action", "inputs"),
    [
        ("aws", "aws-actions/configure-aws-credentials", {"role-to-assume", "aws-region"}),
        ("azure", "azure/login", {"client-id", "tenant-id", "subscription-id"}),
        ("gcp", "google-github-actions/auth", {"workload_identity_provider", "service_account"}),
    ],
)
def test_every_job_that_moves_dvc_data_logs_in_to_the_remotes_cloud_by_oidc(
    initialised: Path, cloud: str, action: str, inputs: set[str]
) -> None:
    """`[tool.branchflow.ci] cloud_login`: before its first `dvc pull`, `dvc repro` or `dvc
    push`, each job that runs a pipeline logs in with the vendor's action (pinned), with
    `id-token: write` and no long-lived key; the linters stay clean."""
    repo = initialised
    pyproject = repo / "pyproject.toml"
    text = pyproject.read_text().replace("lint = []\n", f"lint = []\ncloud_login = '{cloud}'\n")
    pyproject.write_text(text)
    assert init(repo).returncode == 0
    moving = 0
    for name, workflow in workflows(repo).items():
        for job_name, job in workflow["jobs"].items():
            steps = job.get("steps", [])
            runs = [step.get("run", "") for step in steps]
            first = next((i for i, r in enumerate(runs) if r.startswith("dvc ")), None)
            if first is None:
                continue
            moving += 1
            logins = [
                i for i, step in enumerate(steps) if step.get("uses", "").startswith(f"{action}@")
            ]
            assert logins and logins[0] < first, (name, job_name)
            assert set(steps[logins[0]]["with"]) == inputs, (name, job_name)
            assert job["permissions"]["id-token"] == "write", (name, job_name)
    assert moving >= 3
    github = repo / ".github"
    assert_lints_clean(github, sorted((github / "workflows").glob("*.yml")))
    pyproject.write_text(text.replace(f"cloud_login = '{cloud}'", "cloud_login = 'ibm'"))
    result = init(repo)
    assert result.returncode == 3
    assert "ci.cloud_login must be one of '', 'aws', 'azure', 'gcp', got 'ibm'" in result.stderr


@pytest.mark.parametrize(("project", "restore"), [("shapes", False), ("example", True)])
def test_with_production_declared_promotion_is_a_pull_request_and_merges_reconcile(
    request: pytest.FixtureRequest, project: str, restore: bool
) -> None:
    """`[tool.branchflow.production] declared`: promote.yml (and retrain.yml) declare the
    version and open a pull request instead of moving the alias; reconcile.yml applies the
    file on each change of it on main and checks for drift hourly; the linters stay clean."""
    if project == "shapes":
        repo = request.getfixturevalue("initialised")
    else:
        repo = request.getfixturevalue("copy_repo")(request.getfixturevalue("project_repo"))
    with (repo / "pyproject.toml").open("a") as pyproject:
        pyproject.write(
            f'\n[tool.branchflow.production]\ndeclared = "models/production.json"\n'
            f"restore = {str(restore).lower()}\n"
        )
    assert init(repo).returncode == 0
    found = workflows(repo)
    reconcile = found["reconcile.yml"]
    assert reconcile["on"]["push"] == {"branches": ["main"], "paths": ["models/production.json"]}
    job = reconcile["jobs"]["reconcile"]
    issues = {} if restore else {"issues": "write"}  # the drift check opens an issue
    assert job["environment"] == "production"
    assert job["permissions"] == {"contents": "read", **issues}
    runs = {
        step.get("name"): (step.get("if"), step["run"]) for step in job["steps"] if "run" in step
    }
    if restore:
        assert runs["Reconcile"] == (None, "branchflow reconcile --restore")
    else:
        assert runs["Reconcile"] == (
            "github.event_name != 'schedule'",
            "branchflow reconcile --restore",
        )
        condition, script = runs["Check for drift"]
        assert condition == "github.event_name == 'schedule'"
        assert 'branchflow reconcile > "$RUNNER_TEMP/drift.txt" || status=$?' in script
        issue = runs["Open an issue about the drift"]
        assert issue[0] == "failure() && steps.drift.outputs.status == '1'"
        assert issue[1].startswith("gh issue create ")
    assert ("retrain.yml" in found) == (project == "example")
    for name, job_name in [("promote.yml", "declare"), ("retrain.yml", "promote")]:
        if name not in found:
            continue
        steps = found[name]["jobs"][job_name]["steps"]
        commands = " ".join(step.get("run", "") for step in steps)
        assert "branchflow promote --declare " in commands and "gh pr create" in commands
        assert 'branchflow promote "' not in commands and "rollback" not in commands
        assert found[name]["jobs"][job_name]["permissions"] == {
            "contents": "write",
            "pull-requests": "write",
        }
    github = repo / ".github"
    assert_lints_clean(github, sorted((github / "workflows").glob("*.yml")))


def assert_lints_clean(
    github: Path, workflows: list[Path], personas: tuple[tuple[str, ...], ...] = AUDITOR
) -> None:
    """actionlint finds nothing in `workflows`, nor zizmor in `github` with each of `personas`."""
    linted = actionlint(*workflows)
    assert linted.returncode == 0 and linted.stdout == "", linted.stdout + linted.stderr
    for options in personas:
        audited = zizmor(github, *options)
        assert json.loads(audited.stdout) == [] and audited.returncode == 0, audited.stderr


def test_the_gpu_runner_is_launched_on_the_configured_cloud(initialised: Path) -> None:
    """`[tool.branchflow.ci.gpu_runner]` picks the cloud, its credentials' secrets and the machine
    that dev.yml's `cml runner launch` asks for; the result still lints clean."""
    runner = 'gpu_runner = { cloud = "gcp", region = "us-east1-b", type = "m+t4", spot = true }'
    pyproject = initialised / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace("lint = []", f"lint = []\n{runner}"))
    assert init(initialised).stdout.splitlines() == ["wrote .github/workflows/dev.yml"]
    launch = workflows(initialised)["dev.yml"]["jobs"]["launch-runner"]["steps"][-1]
    secrets = {key for key, value in launch["env"].items() if "secrets." in value}
    assert secrets == {"REPO_TOKEN", "GOOGLE_APPLICATION_CREDENTIALS_DATA"}
    assert launch["run"].split()[4:9] == [
        "--cloud=gcp",
        "--cloud-region=us-east1-b",
        "--cloud-type=m+t4",
        "--cloud-hdd-size=100",
        "--cloud-spot",
    ]
    assert_lints_clean(initialised / ".github", [initialised / ".github/workflows/dev.yml"])


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def detected(tmp_path: Path, files: dict[str, str]) -> dict:
    for name, text in files.items():
        write(tmp_path / name, text)
    import tomllib

    pyproject = tmp_path / "pyproject.toml"
    return detect(tmp_path, tomllib.loads(pyproject.read_text()) if pyproject.is_file() else {})


def test_detection_reads_how_a_project_installs_lints_and_tests(tmp_path: Path) -> None:
    uv = detected(
        tmp_path / "uv",
        {
            "pyproject.toml": '[project]\nname = "a"\ndependencies = ["torch>=2"]\n[tool.ruff]\n'
            "[dependency-groups]\nazureml = []\n",
            "uv.lock": 'version = 1\n[[package]]\nname = "a"\nversion = "1"\n',
            "tests/test_a.py": "",
            ".python-version": "3.12\n",
        },
    )
    assert uv == {
        "install": "uv",
        "branchflow": f"branchflow[report,azure]=={__version__}",  # the lock does not hold it
        "python": "3.12",
        "lint": ["uvx ruff check", "uvx ruff format --check"],  # nothing installs ruff
        "test": ["pytest"],
        "torch": True,
        "azureml_groups": ["azureml"],
    }
    pip = detected(tmp_path / "pip", {"pyproject.toml": '[project]\nname = "b"\n', ".flake8": ""})
    assert (pip["install"], pip["lint"], pip["test"]) == ("pip", ["uvx flake8"], [])
    both = detected(
        tmp_path / "req",
        {
            "requirements.txt": "x\n",
            "requirements-dev.txt": "flake8==7.1  # the project's own linter\n",
            "setup.cfg": "[flake8]\nmax-line-length = 100\n",
            "pytest.ini": "",
        },
    )
    assert both["lint"] == ["flake8"]  # its install brings it
    assert (both["install"], both["requirements"], both["test"]) == (
        "requirements",
        ["requirements-dev.txt", "requirements.txt"],
        ["pytest"],
    )


def test_requirements_in_src_are_found_as_dvcs_example_get_started_keeps_them(
    tmp_path: Path,
) -> None:
    """`src/requirements.txt` and no pyproject.toml: init installs it, the PR builds watch it,
    and the Azure ML environment and the model's requirements are its lines."""
    from branchflow.workspace.lock import environment_requirements

    stage = "stages:\n  a:\n    cmd: python src/a.py\n    deps: [src/a.py]\n    outs: [a.txt]\n"
    repo = write(tmp_path / "repo/dvc.yaml", stage).parent
    write(repo / "src/a.py", "open('a.txt', 'w').write('1')\n")
    write(repo / "src/requirements.txt", "dvc>=3.66  # the pipeline's tools\npandas==2.2.3\n")
    assert detected(repo, {})["requirements"] == ["src/requirements.txt"]
    assert environment_requirements(repo, None) == ("dvc>=3.66", "pandas==2.2.3")
    init_repo(repo)
    sh("dvc", "init", "-q", cwd=repo)
    assert init(repo).returncode == 0
    setup = (repo / ".github/actions/setup/action.yml").read_text()
    assert "uv pip install -r src/requirements.txt" in setup
    paths = load(repo / ".github/workflows/pr-training.yml")["on"]["pull_request"]["paths"]
    assert "src/requirements.txt" in paths


def test_this_repository_s_github_folder_is_what_init_writes() -> None:
    """No second copy kept by hand: the checked-in `.github/` is init's output for this config."""
    checked = sh("branchflow", "init", "--check", cwd=ROOT, check=False)
    assert checked.returncode == 0, checked.stdout[-3000:] + checked.stderr


def test_init_refuses_what_is_not_a_dvc_project_and_broken_toml(tmp_path: Path) -> None:
    plain = init_repo(write(tmp_path / "plain" / "README.md", "x\n").parent)
    refused = init(plain)
    assert refused.returncode == 3 and refused.stderr.count("\n") == 1, refused.stderr
    assert "git repository with DVC" in refused.stderr and "Traceback" not in refused.stderr
    broken = write(tmp_path / "broken" / "pyproject.toml", "[tool.branchflow\n").parent
    init_repo(broken)
    sh("dvc", "init", "-q", cwd=broken)
    failed = init(broken)
    assert failed.returncode == 3 and "pyproject.toml: not valid TOML" in failed.stderr
    assert (broken / "pyproject.toml").read_text() == "[tool.branchflow\n"  # nothing lost
    assert not (broken / ".github").exists()
    empty = init_repo(write(tmp_path / "empty" / "README.md", "x\n").parent)
    sh("dvc", "init", "-q", cwd=empty)
    nothing = init(empty)
    assert nothing.returncode == 3 and "git knows no dvc.yaml" in nothing.stderr
    assert nothing.stderr.count("\n") == 1 and not (empty / ".github").exists()


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('install = "requirements"', 'install = "conda"', "install must be one of uv,"),
        ("lint = []", 'lint = "ruff check"', "ci.lint must be a list of non-empty strings"),
        ("lint = []", "lint = []\ntorch = 'yes'", "torch must be true or false"),
        (PINNED, "branchflow = 'branchflow[report]'", "must pin one branchflow"),
        (PINNED, "branchflow = 'branchflow>=0.1'", "must pin one branchflow"),
        (PINNED, "branchflow = 'other==1'", "must pin one branchflow"),
        ("lint = []", "lint = []\ntypo = 1", "unknown key 'typo'"),
        ("lint = []", "lint = []\nretrain = { statistics = 'stats' }", "statistics needs data"),
        ("lint = []", "lint = []\npipelines.x = { pull = ['/abs'] }", "a folder inside the"),
        ("lint = []", "lint = []\nlint = []", "not valid TOML"),
        ("lint = []", "lint = []\ngpu_runner.cloud = 'ibm'", "cloud must be one of aws, azure,"),
        ("lint = []", "lint = []\ngpu_runner.region = '${{ x }}'", "region must be a cloud's"),
        ("lint = []", "lint = []\ngpu_runner.hdd_size = 0", "hdd_size must be a whole number"),
        ("lint = []", "lint = []\nsecrets = ['$(x)']", "'$(x)' is no environment variable name"),
        ("lint = []", "lint = []\nenv = { GITHUB_TOKEN = 'x' }", "not starting with a digit or"),
        ("lint = []", "lint = []\nenv = { DATA = 'x' }", "DATA is set by branchflow's jobs"),
        ("lint = []", "lint = []\nenv = { A = 'x' }\nsecrets = ['A']", "A in both env and"),
    ],
)
def test_a_bad_ci_setting_stops_init_in_one_line(
    initialised: Path, old: str, new: str, message: str
) -> None:
    pyproject = initialised / "pyproject.toml"
    before = pyproject.read_text().replace(old, new)
    pyproject.write_text(before)
    failed = init(initialised)
    assert failed.returncode == 3 and failed.stderr.count("\n") == 1, failed.stderr
    assert message in failed.stderr and "pyproject.toml" in failed.stderr
    assert pyproject.read_text() == before and not init(initialised, "--check").stdout


def test_a_dvc_import_is_a_data_source_and_a_bare_project_installs_only_branchflow(
    tmp_path: Path,
) -> None:
    """A `dvc import` from another (local) DVC repository: pulled and watched like a `.dvc`
    file; a project with no pyproject or requirements gets only branchflow installed; a
    pipeline without metrics is reproduced, with no report, gate or comment."""
    source = init_repo(write(tmp_path / "source/README.md", "data\n").parent)
    write(source / "data/raw.txt", "1 2 3\n")
    sh("dvc", "init", "-q", cwd=source)
    sh("dvc", "add", "-q", "data/raw.txt", cwd=source)
    sh("git", "add", "-A", cwd=source)
    sh("git", "commit", "-qm", "data", cwd=source)
    stage = (
        "stages:\n  n:\n    cmd: wc -w raw.txt > n.txt\n    deps: [raw.txt]\n    outs: [n.txt]\n"
    )
    project = init_repo(write(tmp_path / "project/dvc.yaml", stage).parent)
    sh("dvc", "init", "-q", cwd=project)
    sh("dvc", "import", "-q", str(source), "data/raw.txt", "-o", "raw.txt", cwd=project)
    branchflow("init", cwd=project)
    job = load(project / ".github/workflows/pr-training.yml")
    assert "raw.txt.dvc" in job["on"]["pull_request"]["paths"]
    assert {"name": "Pull the data", "run": "dvc pull raw.txt.dvc"} in job["jobs"]["pipeline"][
        "steps"
    ]
    setup = [
        step.get("name")
        for step in load(project / ".github/actions/setup/action.yml")["runs"]["steps"]
    ]
    assert "Install the project's dependencies" not in setup and "Install branchflow" in setup
    names = [step.get("name") for step in job["jobs"]["pipeline"]["steps"]]
    assert names[-1] == "Reproduce the pipeline" and "Report" not in names
    assert not (project / ".github/workflows/pr-comment.yml").exists()
    dev = load(project / ".github/workflows/dev.yml")["jobs"]
    assert list(dev) == ["training-full"]
    linted = actionlint(*sorted((project / ".github/workflows").glob("*.yml")))
    assert linted.returncode == 0, linted.stdout


def imported_sklearn_repo(tmp_path: Path) -> tuple[Path, Path]:
    """The sklearn project with its rows imported (`dvc import`) from a DVC repository of their
    own, `branchflow init` run and committed: (project, source)."""
    source = init_repo(write(tmp_path / "source/README.md", "rows\n").parent)
    write(source / DATA, json.dumps(ROWS))
    sh("dvc", "init", "-q", cwd=source)
    sh("dvc", "add", "-q", DATA, cwd=source)
    sh("git", "add", "-A", cwd=source)
    sh("git", "commit", "-qm", "rows", cwd=source)
    project = make_sklearn_repo(tmp_path / "project")
    sh("git", "rm", "-q", f"{DATA}.dvc", cwd=project)
    (project / DATA).unlink()
    sh("dvc", "import", "-q", str(source), DATA, "-o", DATA, cwd=project)
    sh("branchflow", "init", cwd=project)
    sh("git", "add", "-A", cwd=project)
    sh("git", "commit", "-qm", "rows imported; CI from branchflow init", cwd=project)
    return project, source


@pytest.mark.e2e
def test_retrain_updates_imported_data_and_retrains_only_when_upstream_moved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a statistics command, retrain.yml watches the model pipeline's `dvc import`s:
    its update step reports no change until the source repository commits new rows; then the
    retrain and register steps train on them and register a second version."""
    hide_ci_variables(monkeypatch, "MLFLOW_")
    repo, source = imported_sklearn_repo(tmp_path)
    sh("branchflow", "register", cwd=repo)
    workflow = load(repo / ".github/workflows/retrain.yml")
    steps = {step.get("name"): step for step in workflow["jobs"]["retrain"]["steps"]}
    assert f"dvc update {DATA}.dvc" in steps["Update the imported data"]["run"]
    assert steps["Retrain"]["if"] == "steps.update.outputs.changed == 'true'"
    runner = tmp_path / "runner"
    runner.mkdir()
    env, contexts = github_env(runner, repo), {"secrets": {}}

    def update() -> str:
        name = "Update the imported data"
        run_job("retrain.yml", "retrain", name, name, repo, env, contexts, repo / ".github")
        return (runner / "output").read_text().splitlines()[-1]

    assert update() == "changed=false"
    write(source / DATA, json.dumps([*ROWS, [0.95, 0.9, 1], [0.05, 0.2, 0]]))
    sh("dvc", "add", "-q", DATA, cwd=source)
    sh("git", "commit", "-qam", "two more rows", cwd=source)
    assert update() == "changed=true"
    (*_, registered) = run_job(
        "retrain.yml", "retrain", "Retrain", "Register the model", repo, env, contexts,
        repo / ".github",
    )  # fmt: skip
    assert registered.returncode == 0, registered.stdout + registered.stderr
    store = f"sqlite:///{repo.resolve() / 'mlflow.db'}"
    client = mlflow.MlflowClient(store, registry_uri=store)  # not another test's registry
    versions = client.search_model_versions("", order_by=["version_number ASC"])
    hashes = [client.get_run(version.run_id).data.tags["data_hash"] for version in versions]
    assert len(versions) == 2 and hashes[0] != hashes[1]
    assert_lints_clean(repo / ".github", [repo / ".github/workflows/retrain.yml"])


def adopt_commands() -> list[str]:
    """The README's adoption section: its one code block, less the install line (this
    environment has branchflow)."""
    section = README.read_text().split(ADOPT, 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    lines = block.strip().splitlines()
    assert len(lines) <= 10 and lines[0].startswith("pip install")
    return lines[1:]


@pytest.mark.e2e
@pytest.mark.parametrize("project", ["shapes", "sklearn"])
def test_a_foreign_project_from_init_through_pr_builds_to_azure_ml(
    project: str,
    shapes: Path,
    toolkit_wheel: Path,
    copy_repo,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The README's adoption commands on `main` (init, repro, register, report, gate, promote,
    compile, init), then each generated PR build's commands on a PR that changes a param, with
    GitHub's variables set: the PR checks pass, every pipeline's report compares with base
    metrics that exist (DVC-cached ones for the sklearn project), and the gates pass. Then
    pr-comment.yml installs the renderer alone (the wheel stands in for the package index) and
    renders each build's artifact."""
    hide_ci_variables(monkeypatch)
    for variable in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(variable, raising=False)
    if project == "shapes":
        repo, params, builds = copy_repo(shapes), "pipelines/train/params.yaml", ("train", "score")
    else:
        repo = make_sklearn_repo(tmp_path / "sklearn" / "repo", cached_metrics=True)
        params, builds = "params.yaml", ("training",)
        pyproject = repo / "pyproject.toml"
        pyproject.write_text(
            pyproject.read_text() + "\n[tool.branchflow.gate.max_drop_vs_base]\naccuracy = 0.5\n"
        )
        sh("git", "commit", "-q", "-am", "gate", cwd=repo)
    for command in adopt_commands():
        result = sh("bash", "-c", command, cwd=repo, check=False)
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
    history = sh("branchflow", "history", "--format", "json", cwd=repo).stdout
    assert json.loads(history), "promote left no champion history"
    assert not (repo / "mlruns").exists()  # the production copy sits in the local store's folder
    assert "branchflow azureml compile --check" in (repo / ".github/workflows/pr.yml").read_text()
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-q", "-m", "Azure ML files", cwd=repo)

    def change(checkout: Path) -> None:
        """A param, and the Azure ML files it changes (pr.yml's compile check says so)."""
        path = checkout / params
        path.write_text(path.read_text().replace("C: 1.0", "C: 2.0"))
        sh("branchflow", "azureml", "compile", cwd=checkout)

    pull = checkout_pull_request(repo, tmp_path, change, "pr")
    github = repo / ".github"
    checks = load(github / "workflows/pr.yml")["jobs"]["checks"]["steps"]
    names = [step.get("name", step.get("run")) for step in checks if "run" in step]
    (*_, last) = run_job("pr.yml", "checks", names[0], names[-1], repo, pull["env"], {}, github)
    assert last.returncode == 0, last.stdout + last.stderr
    for build in builds:
        workflow = f"pr-{build}.yml"
        job = load(github / "workflows" / workflow)["jobs"]["pipeline"]
        first = next(step["name"] for step in job["steps"] if "run" in step)
        env = {**pull["env"], "GITHUB_WORKFLOW": f"pr-{build}"}
        results = run_job(workflow, "pipeline", first, "Gate", repo, env, pull["contexts"], github)
        assert results[-1].returncode == 0, results[-1].stdout + results[-1].stderr
        report = json.loads((repo / "report.json").read_text())
        assert pull["base"].startswith(report["base"]["commit"]) and report["pr"] == 7
        assert report["base"]["metrics_found"] and not report["base"]["metrics_missing"]
        assert all(metric["base"] is not None for metric in report["metrics"]), report["metrics"]
        rendered = render_comment(repo, tmp_path / f"comment-{build}", toolkit_wheel)
        assert rendered == (repo / "report.md").read_text(encoding="utf-8")
        shutil.rmtree(repo / "report_files", ignore_errors=True)


def render_comment(repo: Path, runner: Path, wheel: Path) -> str:
    """pr-comment.yml's steps from installing the renderer to rendering, on the artifact the
    PR build uploads, with `wheel` as the renderer's requirement; the comment it writes."""
    workflow = load(repo / ".github/workflows/pr-comment.yml")
    steps = workflow["jobs"]["comment"]["steps"]
    (install,) = [step for step in steps if "RENDERER" in step.get("env", {})]
    install["env"]["RENDERER"] = str(wheel)
    github = runner / "github"
    write(github / "workflows/pr-comment.yml", yaml.safe_dump(workflow))
    artifact = runner / "pr-report"
    shutil.copytree(repo / "report_files", artifact / "report_files")
    for name in ("report.json", "gate-exit.txt"):
        shutil.copy2(repo / name, artifact / name)
    run = "https://github.com/octo-org/badpixels/actions/runs/4242"  # the PR build's (github_env)
    workflow_run = {"conclusion": "success", "html_url": run}
    contexts = {"github": {"event": {"workflow_run": workflow_run}}, "secrets": {}}
    env = github_env(runner, repo, GITHUB_EVENT_NAME="workflow_run")
    render = "Validate the artifact and render the comment"
    results = run_job(
        "pr-comment.yml", "comment", install["name"], render, repo, env, contexts, github
    )
    assert results[-1].returncode == 0, results[-1].stdout + results[-1].stderr
    assert (runner / "output").read_text() == "pr=7\n"
    return (runner / "comment/report.md").read_text(encoding="utf-8")


@pytest.mark.e2e
def test_the_main_build_pushes_what_the_next_pull_request_compares_with(
    tmp_path: Path,
    azurite: int,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """DVC's example-get-started keeps its metrics in DVC's cache, so a PR's base metrics are
    only readable from the default remote. main.yml's steps, run as GitHub runs them on the
    merged commit, push them there (Azurite stands in for Azure Blob); a fresh clone's PR then
    reproduces and its gate compares with main's metrics."""
    hide_ci_variables(monkeypatch)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    repo = make_sklearn_repo(tmp_path / "sklearn" / "repo", cached_metrics=True)
    pyproject = repo / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text() + "\n[tool.branchflow.gate.max_drop_vs_base]\naccuracy = 0.5\n"
    )
    sh("dvc", "remote", "add", "-q", "-d", "azure", "azure://branchflow/sklearn", cwd=repo)
    assert branchflow("init", cwd=repo).returncode == 0
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-q", "-m", "CI from branchflow init, an Azure Blob remote", cwd=repo)
    github = repo / ".github"
    assert_lints_clean(github, sorted((github / "workflows").glob("*.yml")))  # shellcheck too
    job = load(github / "workflows/main.yml")["jobs"]["training"]
    runs = [step["run"] for step in job["steps"] if "run" in step]
    pushed = ["dvc repro", "dvc push --run-cache", "branchflow register"]
    assert runs == [f"dvc pull {DATA}.dvc", *pushed]
    blob = {"AZURE_STORAGE_CONNECTION_STRING": connection_string(azurite)}

    # Before any main build, the remote holds only the data its owners pushed: a PR build
    # finds no outputs to restore, says so, and reproduces from the data.
    pushed_data = ["dvc", "push", "-q", f"{DATA}.dvc"]
    subprocess.run(pushed_data, cwd=repo, env={**os.environ, **blob}, check=True)
    # (The base's metrics come out of this rebuild: the same bytes as main's dvc.lock records.)
    first_pr = passed(pull_request_build(repo, tmp_path / "first", blob, loosen))
    assert "::warning title=DVC::the remote lacks outputs" in first_pr[0].stdout
    assert "Running stage 'train'" in first_pr[0].stdout, first_pr[0].stdout

    env = {**os.environ, **blob, "GITHUB_ACTIONS": "true", "GITHUB_REF_NAME": "main"}
    contexts = {"secrets": {}}
    first, last = "Pull the data", "Register the model"
    results = run_job("main.yml", "training", first, last, repo, env, contexts, github)
    assert results[-1].returncode == 0, results[-1].stderr

    # The PR builds of a fresh clone, steps as pr-training.yml has them: a PR that changes no
    # stage downloads no data (only the results register, report and gate read), one that
    # changes a training param retrains; each gate compares with main's pushed metrics.
    untouched = passed(pull_request_build(repo, tmp_path / "config", blob, loosen))
    assert "Running stage" not in untouched[0].stdout
    assert not (tmp_path / "config" / "repo" / DATA).exists()  # not downloaded

    def retrain(clone: Path) -> None:
        params = clone / "params.yaml"
        params.write_text(params.read_text().replace("C: 1.0", "C: 2.0"))

    retrained = passed(pull_request_build(repo, tmp_path / "param", blob, retrain))
    assert "Running stage 'train'" in retrained[0].stdout
    assert (tmp_path / "param" / "repo" / DATA).is_file()  # pulled: train reads it


def pull_request_build(
    origin: Path, folder: Path, env: dict[str, str], change: Callable[[Path], None]
) -> list[subprocess.CompletedProcess[str]]:
    """pr-training.yml's steps from the repro to the gate, on a fresh clone of `origin` (an
    empty DVC cache) with `change` as the PR."""
    folder.mkdir()
    clone = folder / "repo"
    sh("git", "clone", "-q", str(origin), str(clone), cwd=folder)
    (clone / ".dvc" / "cache").mkdir()
    pull_request = checkout_pull_request(clone, folder, change, "pr-training")
    steps = run_job(
        "pr-training.yml",
        "pipeline",
        "Reproduce what changed",
        "Gate",
        clone,
        {**pull_request["env"], **env},
        pull_request["contexts"],
        clone / ".github",
    )
    return steps


def passed(steps: list[subprocess.CompletedProcess[str]]) -> list[subprocess.CompletedProcess[str]]:
    """`steps`, once their gate is known to pass against main's metrics."""
    gate = steps[-1]
    assert gate.returncode == 0, gate.stdout + gate.stderr
    assert "ok: `accuracy` vs main" in gate.stdout and "cannot be checked" not in gate.stdout
    return steps


def loosen(clone: Path) -> None:
    """A PR that changes the gate's tolerance: no stage reads pyproject.toml."""
    pyproject = clone / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace("accuracy = 0.5", "accuracy = 0.6"))


def test_dvc_subrepos_are_refused_in_one_line_naming_them(tmp_path: Path) -> None:
    """`dvc init --subdir` makes a DVC project inside the repository that the root's DVC does
    not run (`dvc repro sub/dvc.yaml` says it is dvc-ignored): init names each and writes
    nothing, rather than generating builds that fail."""
    repo = tmp_path / "repo"
    for folder in ("", "first", "second/deep"):
        (repo / folder).mkdir(parents=True, exist_ok=True)
        stage = {"stages": {"build": {"cmd": "echo hi > out.txt", "outs": ["out.txt"]}}}
        (repo / folder / "dvc.yaml").write_text(yaml.safe_dump(stage))
    sh("git", "init", "-q", cwd=repo)
    sh("dvc", "init", "-q", cwd=repo)
    for folder in ("first", "second/deep"):
        sh("dvc", "init", "-q", "--subdir", cwd=repo / folder)
    init_repo(repo)
    refused = init(repo)
    assert refused.returncode == 3 and refused.stderr.count("\n") == 1, refused.stderr
    assert "first/, second/deep/: DVC subrepos" in refused.stderr
    assert not (repo / ".github").exists()


LIVE_DVC_YAML = """
stages:
  train:
    cmd: python train.py
    deps: [train.py]
    outs: [dvclive, model.pkl]
metrics:
  - dvclive/metrics.json
artifacts:
  classifier:
    path: model.pkl
    type: model
"""
LIVE_TRAIN = """import json, pathlib, pickle
from sklearn.linear_model import LogisticRegression
model = LogisticRegression().fit([[0.0], [1.0], [0.1], [0.9]], [0, 1, 0, 1])
pathlib.Path("model.pkl").write_bytes(pickle.dumps(model))
pathlib.Path("dvclive").mkdir(exist_ok=True)
pathlib.Path("dvclive/metrics.json").write_text(json.dumps({"accuracy": 1.0}))
"""


@pytest.mark.e2e
def test_a_dvclive_project_with_a_model_artifact_is_adopted_registered_and_gated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dvclive's layout: top-level `metrics:` inside a cached output, and `artifacts:` of
    `type: model`, which the first init turns into `[tool.branchflow.model]`. Then the README's
    adoption: commit, `init --check`, register, report and gate, on a local MLflow store."""
    hide_ci_variables(monkeypatch)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    repo = tmp_path / "live"
    repo.mkdir()
    (repo / "dvc.yaml").write_text(LIVE_DVC_YAML.lstrip())
    (repo / "train.py").write_text(LIVE_TRAIN)
    (repo / "pyproject.toml").write_text(
        '[project]\nname = "live"\ndependencies = ["scikit-learn"]\n'
        "[tool.branchflow.gate.min]\naccuracy = 0.9\n"
    )
    init_repo(repo)
    sh("dvc", "init", "-q", cwd=repo)
    sh("dvc", "repro", "-q", cwd=repo)
    assert init(repo).returncode == 0
    settings = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["branchflow"]
    assert settings["model"] == {"flavor": "sklearn", "artifacts": {"model": "model.pkl"}}
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-q", "-m", "adopt branchflow", cwd=repo)
    assert init(repo, "--check").returncode == 0
    registered = branchflow("register", cwd=repo)
    assert "model_live_main" in registered.stdout, registered.stdout
    gate = branchflow("gate", cwd=repo, check=False)
    assert gate.returncode == 0 and "`accuracy` is 1.0000, at least the floor" in gate.stdout
    assert branchflow("report", "--out", "report.md", cwd=repo).returncode == 0
    assert "accuracy" in (repo / "report.md").read_text()
