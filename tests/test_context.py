"""Build context, names and `branchflow context`, on real temporary git repositories."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from branchflow.cli import main
from branchflow.errors import BranchflowError
from branchflow.settings import DRIFT_KEYS, KNOWN_KEYS, TABLES, Settings, load_settings
from branchflow.workspace.context import Context, resolve_context
from branchflow.workspace.naming import names_for, slugify
from tests.conftest import BRANCHES, EVIL, hide_ci_variables

# The external rules quoted in branchflow/context.py.
AZURE_MODEL = re.compile(r"^(?![\-_.])[a-zA-Z0-9\-_.]{1,255}(?<!\.)$")
AZURE_EXPERIMENT = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_-]{0,255}")
AZURE_COMPONENT = re.compile(r"[a-z][a-z0-9_]{0,254}")
SETTINGS = Settings(base_name="demo", production_model="demo_production")


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hide the CI variables of whoever runs the tests, and their git configuration."""
    hide_ci_variables(monkeypatch, "GIT_")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for role in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{role}_NAME", "Test")
        monkeypatch.setenv(f"GIT_{role}_EMAIL", "test@example.com")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo, check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository on `main` with one commit and a minimal pyproject.toml."""
    root = tmp_path / "proj"
    root.mkdir()
    (root / "pyproject.toml").write_text('[project]\nname = "Demo.Project"\n')
    git(root, "init", "-q", "-b", "main")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "init")
    return root


def context_for(branch: str, build_id: str | None = None) -> Context:
    sha = "0123456789abcdef0123456789abcdef01234567"
    return Context(
        branch, slugify(branch), sha, sha[:7], False, "local", None, None, build_id, None, False
    )


# --- resolving the context -------------------------------------------------------------------


def test_local_checkout(repo: Path) -> None:
    context = resolve_context(repo, {})
    head = git(repo, "rev-parse", "HEAD")
    assert (context.branch, context.branch_slug, context.commit) == ("main", "main", head)
    assert context.short_commit == head[:7]
    assert (context.run_type, context.dirty, context.detached) == ("local", False, False)
    assert (context.pr_number, context.build_id, context.run_url) == (None, None, None)


def test_git_branch_and_dirty_state(repo: Path) -> None:
    git(repo, "checkout", "-q", "-b", "feature/Foo-Bar")
    (repo / "pyproject.toml").write_text('[project]\nname = "changed"\n')
    context = resolve_context(repo, {})
    assert context.branch == "feature/Foo-Bar"
    assert context.dirty is True


def test_a_rewritten_dvc_lock_alone_is_no_uncommitted_change(repo: Path) -> None:
    """A build's own `dvc repro` rewrites dvc.lock, the record of what ran: still clean."""
    for lock in (repo / "dvc.lock", repo / "pipelines" / "x" / "dvc.lock"):
        lock.parent.mkdir(parents=True, exist_ok=True)
        lock.write_text("schema: '2.0'\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "locks")
    (repo / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    git(repo, "mv", "pipelines/x/dvc.lock", "pipelines/x/moved.lock")
    assert resolve_context(repo, {}).dirty is True  # a rename is a change of another file
    git(repo, "mv", "pipelines/x/moved.lock", "pipelines/x/dvc.lock")
    assert resolve_context(repo, {}).dirty is False
    (repo / "params.yaml").write_text("lr: 0.2\n")
    assert resolve_context(repo, {}).dirty is True


def test_untracked_file_makes_dirty(repo: Path) -> None:
    (repo / "new.py").write_text("")
    assert resolve_context(repo, {}).dirty is True


GITHUB = {"GITHUB_ACTIONS": "true"}
AZURE = {"TF_BUILD": "True"}
GITLAB = {"GITLAB_CI": "true"}


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({**GITHUB, "BRANCHFLOW_BRANCH": "override", "GITHUB_HEAD_REF": "head"}, "override"),
        ({**GITHUB, "GITHUB_HEAD_REF": "head", "GITHUB_REF_NAME": "7/merge"}, "head"),
        ({**GITHUB, "GITHUB_HEAD_REF": "", "GITHUB_REF_NAME": "dev"}, "dev"),
        ({**GITHUB, "GITHUB_REF": "refs/pull/7/merge", "GITHUB_REF_NAME": "7/merge"}, "main"),
        (
            {**AZURE, "BUILD_SOURCEBRANCH": "refs/heads/fix/x", "BUILD_SOURCEBRANCHNAME": "x"},
            "fix/x",
        ),
        ({**AZURE, "BUILD_SOURCEBRANCH": "refs/tags/v1", "BUILD_SOURCEBRANCHNAME": "v1"}, "v1"),
        ({**GITLAB, "CI_COMMIT_BRANCH": "fix/x", "CI_COMMIT_REF_NAME": "fix/x"}, "fix/x"),
        ({**GITLAB, "CI_COMMIT_REF_NAME": "v1", "CI_COMMIT_TAG": "v1"}, "v1"),
        ({"BRANCHFLOW_BRANCH": ""}, "main"),
    ],
)
def test_branch_precedence(repo: Path, env: dict[str, str], expected: str) -> None:
    assert resolve_context(repo, env).branch == expected


@pytest.mark.parametrize("flag", [{}, {"CI": "true"}, {"GITHUB_ACTIONS": "false"}])
def test_variables_of_a_ci_system_that_is_not_running_are_ignored(
    repo: Path, flag: dict[str, str]
) -> None:
    env = {
        **flag,
        "GITHUB_HEAD_REF": "gh",
        "GITHUB_RUN_ID": "1",
        "BUILD_SOURCEBRANCH": "refs/heads/ado",
        "BUILD_REASON": "PullRequest",
        "SYSTEM_PULLREQUEST_PULLREQUESTID": "2",
        "CI_MERGE_REQUEST_IID": "3",
        "CI_PIPELINE_ID": "4",
    }
    context = resolve_context(repo, env)
    assert (context.branch, context.pr_number, context.build_id) == ("main", None, None)
    assert context.run_type == ("main" if flag.get("CI") else "local")


# Each system's documented variables for one PR build and one branch build, with the other
# systems' variables of another build beside them: nothing may leak from one to another.
AZURE_PR = {
    "TF_BUILD": "True",
    "BUILD_REASON": "PullRequest",
    "BUILD_SOURCEBRANCH": "refs/pull/42/merge",
    "BUILD_SOURCEBRANCHNAME": "merge",
    "BUILD_SOURCEVERSION": "e" * 40,
    "SYSTEM_PULLREQUEST_SOURCEBRANCH": "refs/heads/feature/x",
    "SYSTEM_PULLREQUEST_TARGETBRANCH": "refs/heads/main",
    "SYSTEM_PULLREQUEST_PULLREQUESTID": "42",
    "BUILD_BUILDID": "1234",
    "SYSTEM_COLLECTIONURI": "https://dev.azure.com/fabrikam/",
    "SYSTEM_TEAMPROJECT": "Fabrikam Fiber",
}
AZURE_DEV = {
    "TF_BUILD": "True",
    "BUILD_REASON": "IndividualCI",
    "BUILD_SOURCEBRANCH": "refs/heads/dev",
    "BUILD_SOURCEBRANCHNAME": "dev",
    "BUILD_BUILDID": "1235",
    "SYSTEM_COLLECTIONURI": "https://dev.azure.com/fabrikam/",
    "SYSTEM_TEAMPROJECT": "Fabrikam",
}
GITLAB_MR = {
    "CI": "true",
    "GITLAB_CI": "true",
    "CI_PIPELINE_SOURCE": "merge_request_event",
    "CI_MERGE_REQUEST_IID": "42",
    "CI_MERGE_REQUEST_SOURCE_BRANCH_NAME": "feature/x",
    "CI_MERGE_REQUEST_TARGET_BRANCH_NAME": "main",
    "CI_COMMIT_REF_NAME": "feature/x",
    "CI_COMMIT_SHA": "e" * 40,
    "CI_PIPELINE_ID": "1234",
    "CI_PIPELINE_URL": "https://gitlab.com/org/repo/-/pipelines/1234",
}
GITLAB_MAIN = {
    "CI": "true",
    "GITLAB_CI": "true",
    "CI_PIPELINE_SOURCE": "push",
    "CI_COMMIT_BRANCH": "main",
    "CI_COMMIT_REF_NAME": "main",
    "CI_PIPELINE_ID": "1235",
    "CI_PIPELINE_URL": "https://gitlab.com/org/repo/-/pipelines/1235",
}
GITHUB_PR = {
    "CI": "true",
    "GITHUB_ACTIONS": "true",
    "GITHUB_EVENT_NAME": "pull_request",
    "GITHUB_REF": "refs/pull/42/merge",
    "GITHUB_REF_NAME": "42/merge",
    "GITHUB_HEAD_REF": "feature/x",
    "GITHUB_BASE_REF": "main",
    "GITHUB_SHA": "e" * 40,
    "GITHUB_RUN_ID": "1234",
    "GITHUB_SERVER_URL": "https://github.com",
    "GITHUB_REPOSITORY": "org/repo",
}
GITHUB_DEV = {
    "CI": "true",
    "GITHUB_ACTIONS": "true",
    "GITHUB_EVENT_NAME": "push",
    "GITHUB_REF": "refs/heads/dev",
    "GITHUB_REF_NAME": "dev",
    "GITHUB_HEAD_REF": "",
    "GITHUB_RUN_ID": "1235",
    "GITHUB_RUN_ATTEMPT": "2",
    "GITHUB_SERVER_URL": "https://github.com",
    "GITHUB_REPOSITORY": "org/repo",
}
FLAGS = {"CI", "TF_BUILD", "GITLAB_CI", "GITHUB_ACTIONS"}
CI_BUILDS = {
    "azure pr": (
        AZURE_PR,
        ("feature/x", "pr", 42, "main", "1234"),
        "https://dev.azure.com/fabrikam/Fabrikam%20Fiber/_build/results?buildId=1234",
    ),
    "azure dev": (
        AZURE_DEV,
        ("dev", "dev", None, None, "1235"),
        "https://dev.azure.com/fabrikam/Fabrikam/_build/results?buildId=1235",
    ),
    "gitlab mr": (
        GITLAB_MR,
        ("feature/x", "pr", 42, "main", "1234"),
        "https://gitlab.com/org/repo/-/pipelines/1234",
    ),
    "gitlab main": (
        GITLAB_MAIN,
        ("main", "main", None, None, "1235"),
        "https://gitlab.com/org/repo/-/pipelines/1235",
    ),
    "github pr": (
        GITHUB_PR,
        ("feature/x", "pr", 42, "main", "1234"),
        "https://github.com/org/repo/actions/runs/1234",
    ),
    "github dev": (
        GITHUB_DEV,
        ("dev", "dev", None, None, "1235-2"),
        "https://github.com/org/repo/actions/runs/1235",
    ),
}


@pytest.mark.parametrize("build", CI_BUILDS)
def test_each_ci_system_from_its_documented_variables(repo: Path, build: str) -> None:
    variables, expected, run_url = CI_BUILDS[build]
    system = build.split()[0]
    other = {
        key: value
        for name, (values, _, _) in CI_BUILDS.items()
        if not name.startswith(system)
        for key, value in values.items()
        if key not in FLAGS
    }
    for env in (variables, {**other, **variables}):
        context = resolve_context(repo, env)
        fields = (context.branch, context.run_type, context.pr_number, context.base_branch)
        assert (*fields, context.build_id) == expected
        assert context.run_url == run_url
        assert context.commit == git(repo, "rev-parse", "HEAD")


@pytest.mark.parametrize("build", ["azure pr", "gitlab mr", "github pr"])
def test_overrides_win_over_every_ci_system(repo: Path, build: str) -> None:
    sha = "ab" * 20
    overrides = {"BRANCHFLOW_BRANCH": "mine", "BRANCHFLOW_PR": "7", "BRANCHFLOW_COMMIT": sha}
    context = resolve_context(repo, {**CI_BUILDS[build][0], **overrides})
    assert (context.branch, context.pr_number, context.commit) == ("mine", 7, sha)


def test_azure_pr_from_github_has_a_number_besides_its_id(repo: Path) -> None:
    env = {
        **AZURE_PR,
        "SYSTEM_PULLREQUEST_SOURCEBRANCH": "feature/x",  # GitHub repositories: no refs/heads/
        "SYSTEM_PULLREQUEST_TARGETBRANCH": "main",
        "SYSTEM_PULLREQUEST_PULLREQUESTID": "987654321",
        "SYSTEM_PULLREQUEST_PULLREQUESTNUMBER": "42",
    }
    context = resolve_context(repo, env)
    assert (context.branch, context.pr_number, context.base_branch) == ("feature/x", 42, "main")


def test_azure_pr_without_the_policy_variables_takes_the_number_from_the_ref(repo: Path) -> None:
    env = {key: value for key, value in AZURE_PR.items() if not key.startswith("SYSTEM_PULL")}
    context = resolve_context(repo, env)
    assert (context.run_type, context.pr_number) == ("pr", 42)
    assert context.branch == "main"  # git's, never BUILD_SOURCEBRANCHNAME's "merge"


@pytest.mark.parametrize(
    "env",
    [
        {**AZURE_PR, "SYSTEM_PULLREQUEST_PULLREQUESTID": "4x2"},
        {**AZURE_PR, "SYSTEM_PULLREQUEST_PULLREQUESTNUMBER": "-1"},
        {**GITLAB_MR, "CI_MERGE_REQUEST_IID": "\u0663"},
    ],
)
def test_a_pr_id_that_is_not_a_number(repo: Path, env: dict[str, str]) -> None:
    with pytest.raises(BranchflowError) as raised:
        resolve_context(repo, env)
    message = str(raised.value)
    assert "is not a number; it must be the pull request's number" in message
    assert message.startswith("$SYSTEM_PULLREQUEST_" if "TF_BUILD" in env else "$CI_MERGE")
    assert "\n" not in message


def test_detached_head_uses_short_commit(repo: Path) -> None:
    git(repo, "checkout", "-q", "--detach")
    context = resolve_context(repo, {})
    assert context.detached is True
    assert context.branch == context.short_commit == git(repo, "rev-parse", "--short=7", "HEAD")


@pytest.mark.parametrize("build", ["azure pr", "gitlab mr", "github pr"])
def test_pull_request_build_on_detached_merge_commit(repo: Path, build: str) -> None:
    """The commit is HEAD, what was built, whatever the CI's sha variable says."""
    git(repo, "checkout", "-q", "--detach")
    context = resolve_context(repo, CI_BUILDS[build][0])
    assert (context.branch, context.run_type, context.pr_number) == ("feature/x", "pr", 42)
    assert context.detached is True
    assert context.commit == git(repo, "rev-parse", "HEAD")


def test_pr_number_from_event_payload(repo: Path, tmp_path: Path) -> None:
    event = tmp_path / "event.json"
    event.write_text(json.dumps({"pull_request": {"number": 9}}))
    env = {
        **GITHUB,
        "GITHUB_EVENT_NAME": "pull_request_target",
        "GITHUB_EVENT_PATH": str(event),
        "GITHUB_REF": "refs/heads/main",
    }
    context = resolve_context(repo, env)
    assert (context.run_type, context.pr_number) == ("pr", 9)


def test_pr_number_in_the_payload_must_be_a_positive_whole_number(
    repo: Path, tmp_path: Path
) -> None:
    event = tmp_path / "event.json"
    env = {**GITHUB, "GITHUB_EVENT_NAME": "pull_request", "GITHUB_EVENT_PATH": str(event)}
    for number in (True, -3, "7", 2.0):
        event.write_text(json.dumps({"pull_request": {"number": number}}))
        assert resolve_context(repo, env).pr_number is None


def test_a_git_branch_that_is_not_utf8(repo: Path) -> None:
    subprocess.run([b"git", b"checkout", b"-q", b"-b", b"feat\xff"], cwd=repo, check=True)
    with pytest.raises(BranchflowError) as raised:
        resolve_context(repo, {})
    assert str(raised.value) == (
        "the checked-out branch is not valid UTF-8 (b'feat\\xff'); rename it: "
        "git branch -m <new name>"
    )


def test_explicit_pr_and_commit(repo: Path) -> None:
    sha = "ABCDEF0123456789ABCDEF0123456789ABCDEF01"
    context = resolve_context(repo, {"BRANCHFLOW_PR": "5", "BRANCHFLOW_COMMIT": sha})
    assert (context.run_type, context.pr_number) == ("pr", 5)
    assert (context.commit, context.short_commit) == (sha.lower(), "abcdef0")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"BRANCHFLOW_PR": "abc"}, "BRANCHFLOW_PR"),
        ({"BRANCHFLOW_PR": "\u0663"}, "BRANCHFLOW_PR='\u0663' is not a number"),  # Arabic 3
        ({"BRANCHFLOW_COMMIT": "abc123"}, "BRANCHFLOW_COMMIT"),
        # What os.environ holds for bytes that are not UTF-8: lone surrogates.
        *(
            (
                {**flag, key: "feat\udcff"},
                rf"\${key} is not valid UTF-8 \(b'feat\\xff'\); branchflow",
            )
            for flag, key in (
                (GITHUB, "GITHUB_HEAD_REF"),
                (GITHUB, "GITHUB_RUN_ID"),
                (AZURE, "BUILD_SOURCEBRANCH"),
                (AZURE_PR, "SYSTEM_PULLREQUEST_SOURCEBRANCH"),
                (GITLAB_MR, "CI_MERGE_REQUEST_SOURCE_BRANCH_NAME"),
                ({}, "CI"),
                ({}, "GITLAB_CI"),
            )
        ),
    ],
)
def test_bad_overrides_are_errors(repo: Path, env: dict[str, str], message: str) -> None:
    with pytest.raises(BranchflowError, match=message):
        resolve_context(repo, env)


@pytest.mark.parametrize(
    ("branch", "ci", "expected"),
    [
        ("main", {"CI": "true"}, "main"),
        ("dev", {"GITHUB_ACTIONS": "true"}, "dev"),
        ("dev", {"TF_BUILD": "True"}, "dev"),
        ("main", {}, "local"),
        ("feature", {"CI": "true"}, "local"),
    ],
)
def test_run_type(repo: Path, branch: str, ci: dict[str, str], expected: str) -> None:
    assert resolve_context(repo, {"BRANCHFLOW_BRANCH": branch, **ci}).run_type == expected


def test_run_type_follows_configured_branches(repo: Path) -> None:
    (repo / "pyproject.toml").write_text('[tool.branchflow]\nmain_branch = "trunk"\n')
    env = {"CI": "true", "BRANCHFLOW_BRANCH": "trunk"}
    assert resolve_context(repo, env).run_type == "main"
    assert resolve_context(repo, {**env, "BRANCHFLOW_BRANCH": "main"}).run_type == "local"


@pytest.mark.parametrize(
    ("env", "build_id"),
    [
        ({**GITHUB, "GITHUB_RUN_ID": "100", "GITHUB_RUN_ATTEMPT": "1"}, "100"),
        ({**GITHUB, "GITHUB_RUN_ID": "100", "GITHUB_RUN_ATTEMPT": "3"}, "100-3"),
        ({**AZURE, "BUILD_BUILDID": "77"}, "77"),
        ({**GITLAB, "CI_PIPELINE_ID": "78"}, "78"),
    ],
)
def test_build_id(repo: Path, env: dict[str, str], build_id: str) -> None:
    assert resolve_context(repo, env).build_id == build_id


def test_run_url(repo: Path) -> None:
    env = {
        **GITHUB,
        "GITHUB_SERVER_URL": "https://github.com",
        "GITHUB_REPOSITORY": "org/repo",
        "GITHUB_RUN_ID": "100",
    }
    assert resolve_context(repo, env).run_url == "https://github.com/org/repo/actions/runs/100"


def test_not_a_repository(tmp_path: Path) -> None:
    with pytest.raises(BranchflowError, match="not a git repository"):
        resolve_context(tmp_path, {})


def test_repository_without_commits(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q")
    with pytest.raises(BranchflowError, match="no commits yet"):
        resolve_context(tmp_path, {})


def test_unicode_branch_from_git(repo: Path) -> None:
    git(repo, "checkout", "-q", "-b", "user/ünïcode")
    context = resolve_context(repo, {})
    assert context.branch == "user/ünïcode"
    assert context.branch_slug.startswith("user-n-code--")


# --- names -----------------------------------------------------------------------------------


def test_names_for_plain_branch() -> None:
    names = names_for(context_for("main"), SETTINGS)
    assert names.experiment == names.pipeline == "training_demo_main"
    assert names.model == "model_demo_main"
    assert names.production_model == "demo_production"
    assert names.run_name == "training_demo_main_0123456"
    assert names_for(context_for("main", "100-2"), SETTINGS).run_name == "training_demo_main_100-2"


def test_names_follow_pattern_and_pipeline_type() -> None:
    settings = Settings("demo", "prod", name_pattern="{base}-{branch}-{pipeline_type}")
    names = names_for(context_for("dev"), settings, pipeline_type="scoring")
    assert (names.experiment, names.model) == ("demo-dev-scoring", "demo-dev-model")


@pytest.mark.parametrize(
    ("pattern", "branch"), [("{branch}", "demo_production"), ("{base}_{branch}", "production")]
)
def test_no_branch_is_named_as_production(pattern: str, branch: str) -> None:
    settings = Settings("demo", "demo_production", name_pattern=pattern)
    with pytest.raises(BranchflowError, match="'demo_production', the production model's name"):
        names_for(context_for(branch), settings)


@pytest.mark.parametrize("branch", BRANCHES)
def test_names_are_valid_everywhere(branch: str) -> None:
    names = names_for(context_for(branch, "100"), SETTINGS)
    for name in (names.experiment, names.model, names.run_name, slugify(branch)):
        assert AZURE_MODEL.fullmatch(name), name
        assert AZURE_EXPERIMENT.fullmatch(name), name
        assert name == name.lower() and len(name) <= 128
        assert "/" not in name and ":" not in name and "%" not in name
    assert AZURE_COMPONENT.fullmatch(names.pipeline), names.pipeline


def test_names_pass_mlflow_validation() -> None:
    pytest.importorskip("mlflow")
    from mlflow.store.model_registry.file_store import _validate_model_name
    from mlflow.utils.validation import _validate_experiment_name

    for branch in BRANCHES:
        names = names_for(context_for(branch), SETTINGS)
        _validate_experiment_name(names.experiment)
        _validate_model_name(names.model)
    with pytest.raises(Exception, match="model name"):
        _validate_model_name("a/b")  # the validator is live, not a no-op


def test_lossy_names_carry_a_hash_and_keep_it_when_truncated() -> None:
    assert slugify("feature/Foo-Bar") == "feature-foo-bar--" + _sha("feature/Foo-Bar")
    long = slugify("b" * 300)
    assert len(long) == 128
    assert long.endswith("--" + _sha("b" * 300))
    assert slugify("a/b", component=True) == "a_b__" + _sha("a/b")
    assert slugify("1-emoji-🙂").startswith("1-emoji--")
    assert slugify("🙂").startswith("n--")


@pytest.mark.parametrize("branch", ["feature/Faster-Train", "user/ünïcode", "b" * 300])
def test_a_lossy_branch_gives_every_name_the_hash_suffix_of_its_slug(branch: str) -> None:
    slug = slugify(branch)
    digest = slug.rpartition("--")[2]
    assert digest == _sha(branch)
    names = names_for(context_for(branch, "100-2"), SETTINGS)
    for name in (names.experiment, names.model, names.run_name):
        assert name.endswith(f"--{digest}") and name.count("--") == 1, name
    assert names.pipeline.endswith(f"__{digest}")
    assert names.run_name.startswith("training_demo_") and "_100-2--" in names.run_name
    assert names_for(context_for("main"), SETTINGS).experiment == "training_demo_main"


def test_names_never_collide() -> None:
    names = [names_for(context_for(branch), SETTINGS) for branch in BRANCHES]
    for field in ("experiment", "pipeline", "model", "run_name"):
        values = [getattr(n, field) for n in names]
        assert len(set(values)) == len(BRANCHES), field
    slugs = [slugify(branch) for branch in [*BRANCHES, "a--b", "a-b--" + _sha("a/b")[:10]]]
    assert len(set(slugs)) == len(slugs)


def test_names_are_stable_across_processes() -> None:
    code = (
        "import json, sys; from branchflow.workspace.context import slugify; "
        "print(json.dumps([slugify(b) for b in json.loads(sys.argv[1])]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(BRANCHES)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONHASHSEED": "random"},
    ).stdout
    assert json.loads(out) == [slugify(branch) for branch in BRANCHES]


def _sha(raw: str) -> str:
    import hashlib

    return hashlib.sha256(raw.encode()).hexdigest()[:10]


# --- settings --------------------------------------------------------------------------------


def test_settings_defaults_without_pyproject(tmp_path: Path) -> None:
    settings = load_settings(tmp_path)
    assert settings.base_name == tmp_path.name
    assert settings.production_model == f"{tmp_path.name}_production"
    assert (settings.name_pattern, settings.dev_branch, settings.main_branch) == (
        "{pipeline_type}_{base}_{branch}",
        "dev",
        "main",
    )


def test_settings_base_from_project_name(repo: Path) -> None:
    assert load_settings(repo).base_name == "demo-project"


def test_settings_from_table(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.branchflow]\nbase_name = "px"\nproduction_model = "px_live"\n'
        'name_pattern = "{base}_{branch}"\ndev_branch = "develop"\n'
    )
    settings = load_settings(tmp_path)
    assert (settings.base_name, settings.production_model) == ("px", "px_live")
    assert (settings.name_pattern, settings.dev_branch) == ("{base}_{branch}", "develop")


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('base-name = "x"', r"unknown key 'base-name'.*did you mean 'base_name'"),
        ('colour = "x"', r"unknown key 'colour'.*known keys: base_name"),
        ("dev_branch = 3", r"dev_branch must be a non-empty string"),
        ('name_pattern = "{base}"', r"name_pattern .* must use \{branch\}"),
        ('name_pattern = "{branch}_{user}"', r"name_pattern"),
        ('name_pattern = "{branch"', r"name_pattern"),
        ('name_pattern = "{branch:{base}}"', r"no format spec or conversion"),
        ('name_pattern = "{branch:>999999999}"', r"no format spec or conversion"),
        ('name_pattern = "{branch!r}"', r"no format spec or conversion"),
    ],
)
def test_settings_errors_name_the_file_and_key(tmp_path: Path, table: str, message: str) -> None:
    (tmp_path / "pyproject.toml").write_text(f"[tool.branchflow]\n{table}\n")
    with pytest.raises(BranchflowError, match=message) as caught:
        load_settings(tmp_path)
    assert str(tmp_path / "pyproject.toml") in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda path: path.write_bytes(b"[tool.branchflow]\nbase_name = '\xff'\n"), "not UTF-8"),
        (lambda path: path.mkdir(), "not a regular file"),
        (lambda path: path.symlink_to("/dev/zero"), "not a regular file"),
    ],
)
def test_a_pyproject_that_is_no_readable_file_is_one_line(
    tmp_path: Path, make: Callable[[Path], object], message: str
) -> None:
    make(tmp_path / "pyproject.toml")
    with pytest.raises(BranchflowError, match=message) as caught:
        load_settings(tmp_path)
    assert "\n" not in str(caught.value)


def test_every_setting_is_documented_with_its_default() -> None:
    docs = (Path(__file__).parents[1] / "docs" / "config.md").read_text()
    for key in KNOWN_KEYS:
        assert (f"`[tool.branchflow.{key}]`" if key in TABLES else f"| `{key}` |") in docs, key
    for key in DRIFT_KEYS:
        assert f"| `{key}` |" in docs, key


def test_invalid_toml(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.branchflow\n")
    with pytest.raises(BranchflowError, match="invalid TOML"):
        load_settings(tmp_path)


# --- command line ----------------------------------------------------------------------------


def invoke(repo: Path, monkeypatch: pytest.MonkeyPatch, *args: str, **env: str):
    monkeypatch.chdir(repo)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return CliRunner().invoke(main, ["context", *args])


def test_cli_json(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = invoke(
        repo, monkeypatch, "--pipeline-type", "scoring", GITHUB_ACTIONS="true", GITHUB_RUN_ID="5"
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["branch"] == "main" and data["build_id"] == "5"
    assert data["names"]["experiment"] == "scoring_demo-project_main"
    assert data["names"]["run_name"] == "scoring_demo-project_main_5"


def test_cli_shell_output_is_quoted(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = invoke(repo, monkeypatch, "--format", "shell", BRANCHFLOW_BRANCH=EVIL)
    assert result.exit_code == 0, result.output
    lines = [shlex.split(line) for line in result.stdout.splitlines()]
    assert all(len(words) == 2 and words[0] == "export" for words in lines)
    assert ["export", f"BRANCHFLOW_BRANCH={EVIL}"] in lines


def test_cli_shell_output_is_safe_to_eval(
    repo: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Same metacharacters as EVIL, but harmless should quoting ever break: never eval `rm`.
    payload = "x; touch pwned $(touch pwned) `touch pwned` 'q\" \\"
    result = invoke(repo, monkeypatch, "--format", "shell", BRANCHFLOW_BRANCH=payload)
    assert result.exit_code == 0, result.output
    script = result.stdout + 'printf %s "$BRANCHFLOW_BRANCH"'
    shell = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert shell.stdout == payload
    assert not (tmp_path / "pwned").exists()


def test_cli_github_files(repo: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env_file, output_file = tmp_path / "env", tmp_path / "output"
    env_file.write_text("EXISTING=1\n")
    result = invoke(
        repo,
        monkeypatch,
        "--format",
        "github",
        GITHUB_ENV=str(env_file),
        GITHUB_OUTPUT=str(output_file),
        BRANCHFLOW_BRANCH="line1\nline2",
    )
    assert result.exit_code == 0, result.output
    env_lines = env_file.read_text().splitlines()
    assert env_lines[0] == "EXISTING=1"
    assert "BRANCHFLOW_RUN_TYPE=local" in env_lines
    start = next(i for i, line in enumerate(env_lines) if line.startswith("BRANCHFLOW_BRANCH<<"))
    delimiter = env_lines[start].partition("<<")[2]
    assert env_lines[start + 1 : start + 4] == ["line1", "line2", delimiter]
    outputs = output_file.read_text().splitlines()
    assert "run_type=local" in outputs
    assert any(
        line.startswith("experiment=training_demo-project_line1-line2--") for line in outputs
    )


def test_cli_github_requires_the_files(
    repo: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    result = invoke(repo, monkeypatch, "--format", "github", GITHUB_ENV=str(tmp_path / "env"))
    assert result.exit_code == 3
    assert result.stderr.startswith("error: $GITHUB_OUTPUT not set")


@pytest.mark.parametrize("where", ["a folder", "in a missing folder"])
def test_cli_github_file_that_cannot_be_appended_to(
    repo: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, where: str
) -> None:
    env_file = tmp_path / "env" if where == "a folder" else tmp_path / "gone" / "env"
    (tmp_path / "env").mkdir()
    output_file = tmp_path / "output"
    github = {"GITHUB_ENV": str(env_file), "GITHUB_OUTPUT": str(output_file)}
    result = invoke(repo, monkeypatch, "--format", "github", **github)
    assert result.exit_code == 3
    reason = "Is a directory" if where == "a folder" else "No such file or directory"
    assert result.stderr == (
        f"error: $GITHUB_ENV={env_file}: cannot append to it ({reason}); it must name a "
        "writable file, as GitHub Actions sets it\n"
    )
    assert not output_file.exists()  # nothing written to the other file either


def test_cli_error_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = invoke(tmp_path, monkeypatch)
    assert result.exit_code == 3
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: ") and "not a git repository" in result.stderr
    assert "Traceback" not in result.output


def test_real_subprocess(repo: Path, tmp_path: Path) -> None:
    executable = shutil.which("branchflow")
    assert executable, "branchflow is not installed on PATH"
    result = subprocess.run(
        [executable, "context", "--format", "json"],
        cwd=repo,
        capture_output=True,
        text=True,
        env={**os.environ, "BRANCHFLOW_BRANCH": EVIL},
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["branch"] == EVIL
    assert data["names"]["experiment"].startswith("training_demo-project_x-rm-rf-touch-pwned-id--")
    assert not (repo / "pwned").exists() and not (tmp_path / "pwned").exists()


def test_real_subprocess_with_a_branch_that_is_not_utf8(repo: Path) -> None:
    executable = shutil.which("branchflow")
    assert executable, "branchflow is not installed on PATH"
    env = {**os.environb, b"BRANCHFLOW_BRANCH": b"feat\xff"}
    result = subprocess.run([executable, "context"], cwd=repo, capture_output=True, env=env)
    assert result.returncode == 3
    assert result.stdout == b""
    assert result.stderr == (
        b"error: $BRANCHFLOW_BRANCH is not valid UTF-8 (b'feat\\xff'); branchflow needs UTF-8 "
        b"text: rename the branch, or fix or unset the variable\n"
    )


def test_help_does_not_import_the_toolkit() -> None:
    heavy = "{'branchflow.workspace.context', 'mlflow', 'dvc'}"
    code = f"import sys; from branchflow.cli import main; assert not {heavy} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_pr_builds_base_sha_is_shown_by_its_branch_name(repo: Path) -> None:
    """PR builds pass `--base "$BASE_SHA"`; the report names the base as the PR's base branch."""
    from branchflow.report.compare import resolve_base

    head = git(repo, "rev-parse", "HEAD")
    assert resolve_base(repo, head, branch="main") == resolve_base(repo, "main")
    assert resolve_base(repo, head).ref == head
    assert resolve_base(repo, head[:7], branch="main").ref == head[:7]  # not the full SHA


@pytest.mark.parametrize("command", [["history"], ["pin", "--out", "model.json"]])
def test_a_read_only_command_creates_no_local_store(
    repo: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    from tests.conftest import branchflow, hide_ci_variables

    hide_ci_variables(monkeypatch, "MLFLOW_")
    refused = branchflow(*command, cwd=repo, check=False)
    assert refused.returncode == 3 and refused.stderr.count("\n") == 1, refused.stderr
    assert "no MLflow registry to read" in refused.stderr
    assert not (repo / "mlflow.db").exists() and not (repo / "model.json").exists()
