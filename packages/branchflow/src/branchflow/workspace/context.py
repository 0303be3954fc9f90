"""The build context: branch, commit, dirty state, run type, PR and CI run, from the CI
system's documented variables (GitHub Actions, Azure Pipelines, GitLab CI) or git, and its
output as JSON, shell `export` lines or GitHub's `$GITHUB_ENV`/`$GITHUB_OUTPUT` files."""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import TextIO
from urllib.parse import quote

from branchflow.errors import BranchflowError
from branchflow.settings import Settings, load_settings
from branchflow.workspace.git import git
from branchflow.workspace.naming import Names, slugify

SHORT_COMMIT_LENGTH = 7
PR_EVENTS = frozenset({"pull_request", "pull_request_target"})
UTF8_FIX = "branchflow needs UTF-8 text: rename the branch, or fix or unset the variable"


@dataclass(frozen=True)
class Context:
    """Where and what is being built."""

    branch: str
    branch_slug: str
    commit: str
    short_commit: str
    dirty: bool
    run_type: str
    pr_number: int | None
    base_branch: str | None  # a PR's target branch
    build_id: str | None
    run_url: str | None
    detached: bool


def project_root(start: Path) -> Path:
    """The project a command run in `start` works on: the nearest folder at or above it that
    holds `.dvc/` (DVC's own root, so a subrepo is a project of its own), else the git
    checkout's top, else `start`. Commands run from a subfolder so act on the project."""
    start = start.resolve()
    for folder in (start, *start.parents):
        if (folder / ".dvc").is_dir():
            return folder
        if (folder / ".git").exists():
            return folder
    return start


def resolve_context(
    root: Path, env: Mapping[str, str] = os.environ, settings: Settings | None = None
) -> Context:
    """Resolve the context of the checkout at `root` from CI variables and git.

    `BRANCHFLOW_BRANCH`, `BRANCHFLOW_PR` and `BRANCHFLOW_COMMIT` win over what the CI system
    says. `dirty` counts untracked (not ignored) files too: they can change what a run produces;
    it does not count `dvc.lock` files, the record `dvc repro` writes of what it ran (a build's
    own repro rewrites them), which no stage reads.
    """
    _require_repository(root)
    settings = settings or load_settings(root)
    commit = _commit(root, env)
    git_branch = git(root, "symbolic-ref", "--short", "-q", "HEAD", check=False).stdout.strip()
    _require_utf8("the checked-out branch", git_branch, "rename it: git branch -m <new name>")
    run = detect_ci(env)
    branch = (
        _read(env, "BRANCHFLOW_BRANCH") or run.branch or git_branch or commit[:SHORT_COMMIT_LENGTH]
    )
    explicit_pr = _read(env, "BRANCHFLOW_PR")
    pr_number = _number("BRANCHFLOW_PR", explicit_pr) if explicit_pr else run.pr_number
    return Context(
        branch=branch,
        branch_slug=slugify(branch),
        commit=commit,
        short_commit=commit[:SHORT_COMMIT_LENGTH],
        dirty=any(PurePosixPath(path).name != "dvc.lock" for path in _changed(root)),
        run_type=_run_type(env, run, branch, pr_number, settings),
        pr_number=pr_number,
        base_branch=run.base_branch,
        build_id=run.build_id,
        run_url=run.run_url,
        detached=not git_branch,
    )


def _changed(root: Path) -> list[str]:
    """The paths `git status` lists: changed, staged, deleted or untracked (not ignored)."""
    entries = git(root, "status", "--porcelain", "-z").stdout.split("\0")
    paths, skip = [], False
    for entry in entries:
        if skip or not entry:  # a rename's or copy's old path follows its entry
            skip = False
            continue
        paths.append(entry[3:])
        skip = entry[0] in "RC"
    return paths


def as_dict(context: Context, names: Names) -> dict[str, object]:
    """The context with its names nested under `names`, ready for JSON."""
    return {**asdict(context), "names": asdict(names)}


def env_vars(context: Context, names: Names) -> dict[str, str]:
    """`BRANCHFLOW_<FIELD>` variables; None becomes "" and booleans `true`/`false`."""
    return {f"BRANCHFLOW_{key.upper()}": value for key, value in _flat(context, names).items()}


def write_github_files(context: Context, names: Names, env: Mapping[str, str]) -> None:
    """Append `BRANCHFLOW_*` to `$GITHUB_ENV` and the plain fields to `$GITHUB_OUTPUT`."""
    targets = {"GITHUB_ENV": env_vars(context, names), "GITHUB_OUTPUT": _flat(context, names)}
    missing = [variable for variable in targets if not env.get(variable)]
    if missing:
        raise BranchflowError(
            f"${' and $'.join(missing)} not set: GitHub Actions sets them in a workflow step; "
            "elsewhere use --format shell or json"
        )
    lines = {
        var: [_github_line(key, value) for key, value in values.items()]
        for var, values in targets.items()
    }
    append_github_file(env, lines)


def append_github_file(env: Mapping[str, str], lines: Mapping[str, list[str]]) -> None:
    """Append `lines` to the file each variable (`GITHUB_ENV`, ...) of `env` names; every file
    is opened before any is written, so a bad one leaves all untouched."""
    with ExitStack() as stack:
        handles = {variable: _open_for_append(variable, env[variable], stack) for variable in lines}
        for variable, handle in handles.items():
            handle.writelines(lines[variable])


def _open_for_append(variable: str, value: str, stack: ExitStack) -> TextIO:
    _require_utf8(f"${variable}", value, "GitHub Actions sets it to a file's path")
    try:
        return stack.enter_context(Path(value).open("a", encoding="utf-8"))
    except OSError as exc:
        raise BranchflowError(
            f"${variable}={value}: cannot append to it ({exc.strerror}); it must name a "
            "writable file, as GitHub Actions sets it"
        ) from None


def _flat(context: Context, names: Names) -> dict[str, str]:
    return {key: _text(value) for key, value in {**asdict(context), **asdict(names)}.items()}


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _github_line(key: str, value: str) -> str:
    """`KEY=value`, or the multi-line heredoc form when `value` holds a line break."""
    if "\n" not in value and "\r" not in value:
        return f"{key}={value}\n"
    delimiter = f"ghadelimiter_{uuid.uuid4().hex}"
    return f"{key}<<{delimiter}\n{value}\n{delimiter}\n"


def data_version(sources: Iterable[tuple[str, str]]) -> str | None:
    """The data a run used, as one string: the md5 of the only DVC data source (the output of
    a `.dvc` file), else `path:md5` of each, sorted; None when there is none."""
    pairs = sorted(sources)
    if len(pairs) == 1:
        return pairs[0][1]
    return ", ".join(f"{path}:{md5}" for path, md5 in pairs) or None


def _read(env: Mapping[str, str], key: str) -> str:
    """`env[key]`, "" when unset; POSIX allows any bytes, and branchflow reads only UTF-8."""
    value = env.get(key, "")
    _require_utf8(f"${key}", value, UTF8_FIX)
    return value


def _require_utf8(what: str, value: str, fix: str) -> None:
    """Python decodes undecodable bytes to lone surrogates; they cannot be printed or written."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raw = value.encode("utf-8", "surrogateescape")
        raise BranchflowError(f"{what} is not valid UTF-8 ({raw!r}); {fix}") from None


def _require_repository(root: Path) -> None:
    if git(root, "rev-parse", "--is-inside-work-tree", check=False).returncode != 0:
        raise BranchflowError(
            f"{root} is not a git repository; run branchflow inside your project's checkout "
            "(or `git init` it)"
        )


def _commit(root: Path, env: Mapping[str, str]) -> str:
    """`BRANCHFLOW_COMMIT`, else HEAD: the commit that was built.

    A PR build checks out the PR merged into its target; that merge commit is HEAD, and the
    CI's own sha (`GITHUB_SHA`, `BUILD_SOURCEVERSION`, `CI_COMMIT_SHA`) names it too, so it is
    not read.
    """
    explicit = _read(env, "BRANCHFLOW_COMMIT")
    if explicit:
        if not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", explicit.lower()):
            raise BranchflowError(
                f"BRANCHFLOW_COMMIT={explicit!r} is not a full commit sha; set the 40-hex sha"
            )
        return explicit.lower()
    head = git(root, "rev-parse", "--verify", "-q", "HEAD", check=False)
    if head.returncode != 0:
        raise BranchflowError(f"{root} has no commits yet; commit once, then run again")
    return head.stdout.strip()


def _number(variable: str, value: str) -> int:
    """A PR number: ASCII digits only (`str.isdigit` also takes other scripts' digits)."""
    if not re.fullmatch(r"[0-9]+", value):
        raise BranchflowError(
            f"${variable}={value!r} is not a number; it must be the pull request's number, "
            "in ASCII digits"
        )
    return int(value)


def _run_type(
    env: Mapping[str, str], run: CiRun, branch: str, pr_number: int | None, settings: Settings
) -> str:
    if pr_number is not None or run.pull_request:
        return "pr"
    in_ci = run.system is not None or _read(env, "CI").lower() == "true"
    if in_ci and branch == settings.main_branch:
        return "main"
    if in_ci and branch == settings.dev_branch:
        return "dev"
    return "local"


# --- CI systems: one detector each, from the variables each system documents ----------------


@dataclass(frozen=True)
class CiRun:
    """What a CI system's variables say about this build; `system` is None outside CI."""

    system: str | None = None
    branch: str | None = None  # for a PR, its source branch
    pull_request: bool = False
    pr_number: int | None = None
    base_branch: str | None = None
    build_id: str | None = None
    run_url: str | None = None


def detect_ci(env: Mapping[str, str]) -> CiRun:
    """The run of the first CI system whose flag variable is `true` (any case), else none."""
    for flag, detector in CI_SYSTEMS:
        if _read(env, flag).lower() == "true":
            return detector(env)
    return CiRun()


def _github(env: Mapping[str, str]) -> CiRun:
    """GitHub Actions (docs.github.com, "Variables reference": default environment variables).

    In a PR `GITHUB_REF` is `refs/pull/<n>/merge` and `GITHUB_REF_NAME` `<n>/merge`; the
    branch is `GITHUB_HEAD_REF`. `pull_request_target` runs on the base branch, and only the
    event payload names the PR.
    """
    ref = _read(env, "GITHUB_REF")
    pull_ref = ref.startswith("refs/pull/")
    run_id = _read(env, "GITHUB_RUN_ID")
    attempt = _read(env, "GITHUB_RUN_ATTEMPT")
    server, repository = _read(env, "GITHUB_SERVER_URL"), _read(env, "GITHUB_REPOSITORY")
    return CiRun(
        system="GitHub Actions",
        branch=_read(env, "GITHUB_HEAD_REF")
        or (None if pull_ref else _read(env, "GITHUB_REF_NAME")),
        pull_request=pull_ref or _read(env, "GITHUB_EVENT_NAME") in PR_EVENTS,
        pr_number=_pull_ref_number(ref) or _pr_number_from_event(env),
        base_branch=_read(env, "GITHUB_BASE_REF") or None,
        build_id=f"{run_id}-{attempt}" if run_id and _retried(attempt) else run_id or None,
        run_url=_url_if_all(server, repository, "actions/runs", run_id),
    )


def _retried(attempt: str) -> bool:
    return attempt.isdecimal() and int(attempt) > 1


def _url_if_all(*parts: str) -> str | None:
    """The parts joined by `/`, each without its outer slashes; None when one is empty."""
    return "/".join(part.strip("/") for part in parts) if all(parts) else None


def _azure(env: Mapping[str, str]) -> CiRun:
    """Azure Pipelines (learn.microsoft.com/azure/devops/pipelines/build/variables).

    A PR build (`BUILD_REASON=PullRequest`) has `BUILD_SOURCEBRANCH=refs/pull/<id>/merge`;
    its branches are `SYSTEM_PULLREQUEST_SOURCEBRANCH`/`TARGETBRANCH` (`refs/heads/x` for
    Azure Repos, `x` for GitHub). GitHub PRs have a number distinct from their id.
    """
    source = _read(env, "BUILD_SOURCEBRANCH")
    pull = _read(env, "BUILD_REASON") == "PullRequest" or source.startswith("refs/pull/")
    build_id = _read(env, "BUILD_BUILDID")
    collection, project = _read(env, "SYSTEM_COLLECTIONURI"), _read(env, "SYSTEM_TEAMPROJECT")
    results = f"_build/results?buildId={build_id}" if build_id else ""
    return CiRun(
        system="Azure Pipelines",
        branch=_azure_branch(env, source, pull),
        pull_request=pull,
        pr_number=_azure_pr_number(env, source) if pull else None,
        base_branch=_short_branch(_read(env, "SYSTEM_PULLREQUEST_TARGETBRANCH")) if pull else None,
        build_id=build_id or None,
        run_url=_url_if_all(collection, quote(project), results),
    )


def _azure_branch(env: Mapping[str, str], source: str, pull: bool) -> str | None:
    """A PR's source branch, else the built branch; a tag's name (`BUILD_SOURCEBRANCHNAME` is
    only the last segment of `refs/heads/feature/x`, and `merge` in a PR)."""
    if pull:
        return _short_branch(_read(env, "SYSTEM_PULLREQUEST_SOURCEBRANCH"))
    if source.startswith("refs/heads/"):
        return _short_branch(source)
    return _read(env, "BUILD_SOURCEBRANCHNAME") or None


def _azure_pr_number(env: Mapping[str, str], source: str) -> int | None:
    for variable in ("SYSTEM_PULLREQUEST_PULLREQUESTNUMBER", "SYSTEM_PULLREQUEST_PULLREQUESTID"):
        value = _read(env, variable)
        if value:
            return _number(variable, value)
    return _pull_ref_number(source)


def _gitlab(env: Mapping[str, str]) -> CiRun:
    """GitLab CI/CD (docs.gitlab.com/ci/variables/predefined_variables).

    `CI_MERGE_REQUEST_*` is set in merge request pipelines only, where `CI_COMMIT_BRANCH` is
    not; `CI_COMMIT_REF_NAME` is the tag in tag pipelines.
    """
    iid = _read(env, "CI_MERGE_REQUEST_IID")
    branch = _read(env, "CI_MERGE_REQUEST_SOURCE_BRANCH_NAME") if iid else ""
    return CiRun(
        system="GitLab CI",
        branch=branch or _read(env, "CI_COMMIT_BRANCH") or _read(env, "CI_COMMIT_REF_NAME") or None,
        pull_request=bool(iid),
        pr_number=_number("CI_MERGE_REQUEST_IID", iid) if iid else None,
        base_branch=(_read(env, "CI_MERGE_REQUEST_TARGET_BRANCH_NAME") if iid else "") or None,
        build_id=_read(env, "CI_PIPELINE_ID") or None,
        run_url=_read(env, "CI_PIPELINE_URL") or None,
    )


# (flag variable, detector): add a CI system here.
CI_SYSTEMS: tuple[tuple[str, Callable[[Mapping[str, str]], CiRun]], ...] = (
    ("GITHUB_ACTIONS", _github),
    ("TF_BUILD", _azure),
    ("GITLAB_CI", _gitlab),
)


def _short_branch(ref: str) -> str | None:
    """`refs/heads/feature/x` -> `feature/x` (the full ref keeps `a/x` and `b/x` apart)."""
    return ref.removeprefix("refs/heads/") or None


def _pull_ref_number(ref: str) -> int | None:
    """`<n>` of `refs/pull/<n>/merge` (or `/head`), else None."""
    match = re.fullmatch(r"refs/pull/([0-9]+)/(?:merge|head)", ref)
    return int(match[1]) if match else None


def _pr_number_from_event(env: Mapping[str, str]) -> int | None:
    """The PR number in the GitHub event payload, for `pull_request_target` events."""
    path = _read(env, "GITHUB_EVENT_PATH")
    if _read(env, "GITHUB_EVENT_NAME") not in PR_EVENTS or not path:
        return None
    try:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BranchflowError(f"cannot read the GitHub event payload {path}: {exc}") from exc
    pull_request = payload.get("pull_request") if isinstance(payload, dict) else None
    number = pull_request.get("number") if isinstance(pull_request, dict) else None
    valid = isinstance(number, int) and not isinstance(number, bool) and number > 0
    return number if valid else None
