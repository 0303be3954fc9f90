r"""The build context (branch, commit, CI run) and every name derived from it.

Names are derived here and nowhere else, so MLflow, DVC and Azure ML always agree on them.

Naming rules the sanitiser satisfies:

- Azure ML models: the REST API validates `^(?![\-_.])[a-zA-Z0-9\-_.]{1,255}(?<!\.)$`
  (azure-ai-ml 1.35, `_restclient/model_dataplane/operations/_models_operations.py`).
- Azure ML experiments: "Experiment name must be 1-256 characters, start with a letter or a
  number, and can only contain letters, numbers, underscores, and dashes" (service error quoted
  in github.com/microsoft/dstoolkit-mlops-v2/issues/179). Job/run ids: `^[a-zA-Z0-9][\w-]{0,255}$`
  (`_restclient/runhistory/operations/_runs_operations.py`).
- Azure ML components: "Must start with lowercase letter. Allowed characters are lowercase
  letters, numbers, and underscore(_). Maximum length is 255 characters."
  (learn.microsoft.com/azure/machine-learning/reference-yaml-component-command).
- Azure resource names compare case-insensitively (learn.microsoft.com, resource-name-rules).
- MLflow registered models: no `/`, `:` or `%`, and `posixpath.normpath(name) == name`
  (mlflow 3.x `utils/validation.py::_validate_model_name`, `store/model_registry/file_store.py`);
  names are stored in `String(256)` columns. MLflow experiment names: at most 500 characters.

So names use lowercase `[a-z0-9_-]`, start with a letter or digit and stay within
`MAX_NAME_LENGTH`; the pipeline name also follows the stricter component grammar.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import uuid
from collections.abc import Iterable, Mapping
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

from branchflow.config import Settings, load_settings
from branchflow.errors import BranchflowError

# Well under the 255-character limits above, leaving room for suffixes added by later steps.
MAX_NAME_LENGTH = 128
HASH_LENGTH = 10
SHORT_COMMIT_LENGTH = 7
PR_EVENTS = frozenset({"pull_request", "pull_request_target"})
CI_FLAGS = ("CI", "GITHUB_ACTIONS", "TF_BUILD")
# Every environment variable the context is read from.
READ_VARIABLES = (
    *CI_FLAGS,
    "BRANCHFLOW_BRANCH",
    "BRANCHFLOW_COMMIT",
    "BRANCHFLOW_PR",
    "BUILD_BUILDID",
    "BUILD_SOURCEBRANCH",
    "BUILD_SOURCEBRANCHNAME",
    "CI_COMMIT_REF_NAME",
    "GITHUB_EVENT_NAME",
    "GITHUB_EVENT_PATH",
    "GITHUB_HEAD_REF",
    "GITHUB_REF",
    "GITHUB_REF_NAME",
    "GITHUB_REPOSITORY",
    "GITHUB_RUN_ATTEMPT",
    "GITHUB_RUN_ID",
    "GITHUB_SERVER_URL",
)


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
    build_id: str | None
    run_url: str | None
    detached: bool


@dataclass(frozen=True)
class Names:
    """Names for one branch and pipeline type, valid in both MLflow and Azure ML."""

    experiment: str
    pipeline: str
    model: str
    production_model: str
    run_name: str


@dataclass(frozen=True)
class _Grammar:
    """Allowed characters, the filler that replaces the others, and what may not lead."""

    disallowed: re.Pattern[str]
    fill: str
    bad_start: re.Pattern[str]


_ASSET = _Grammar(re.compile(r"[^a-z0-9_-]+"), "-", re.compile(r"^[^a-z0-9]+"))
_COMPONENT = _Grammar(re.compile(r"[^a-z0-9_]+"), "_", re.compile(r"^[^a-z]+"))


def slugify(raw: str, *, component: bool = False) -> str:
    """Turn `raw` into a valid, stable name; a lossy conversion appends a hash of `raw`.

    Runs of the filler collapse to one, so a doubled filler (`--`, or `__` for components)
    never occurs in a lossless name; it marks the hash suffix. Lossless and hashed names
    therefore never coincide, and two hashed names differ whenever their raw strings do.
    """
    grammar = _COMPONENT if component else _ASSET
    body = grammar.disallowed.sub(grammar.fill, raw.lower())
    body = re.sub(re.escape(grammar.fill) + "{2,}", grammar.fill, body)
    body = grammar.bad_start.sub("", body).rstrip(grammar.fill)
    if body == raw and len(body) <= MAX_NAME_LENGTH:
        return body
    digest = hashlib.sha256(raw.encode("utf-8", "surrogateescape")).hexdigest()[:HASH_LENGTH]
    marker = grammar.fill * 2
    keep = MAX_NAME_LENGTH - len(marker) - HASH_LENGTH
    # "n" stands in when nothing valid is left, e.g. for a branch named only in emoji.
    return f"{body[:keep].rstrip(grammar.fill) or 'n'}{marker}{digest}"


def names_for(context: Context, settings: Settings, pipeline_type: str = "training") -> Names:
    """Derive every name for this context from `settings.name_pattern`.

    The candidate model fills the pattern with the pipeline type `model`, so all pipeline
    types of a branch share it; the pipeline name follows the Azure ML component grammar.
    """

    def fill(kind: str) -> str:
        return settings.name_pattern.format(
            pipeline_type=kind, base=settings.base_name, branch=context.branch
        )

    raw = fill(pipeline_type)
    return Names(
        experiment=slugify(raw),
        pipeline=slugify(raw, component=True),
        model=slugify(fill("model")),
        production_model=slugify(settings.production_model),
        run_name=slugify(f"{raw}_{context.build_id or context.short_commit}"),
    )


def resolve_context(
    root: Path, env: Mapping[str, str] = os.environ, settings: Settings | None = None
) -> Context:
    """Resolve the context of the checkout at `root` from CI variables and git.

    `dirty` counts untracked (not ignored) files too: they can change what a run produces.
    """
    _require_repository(root)
    settings = settings or load_settings(root)
    _require_utf8_env(env)
    commit = _commit(root, env)
    git_branch = git(root, "symbolic-ref", "--short", "-q", "HEAD", check=False).stdout.strip()
    _require_utf8("the checked-out branch", git_branch, "rename it: git branch -m <new name>")
    branch = _branch_from_env(env) or git_branch or commit[:SHORT_COMMIT_LENGTH]
    pr_number = _pr_number(env)
    return Context(
        branch=branch,
        branch_slug=slugify(branch),
        commit=commit,
        short_commit=commit[:SHORT_COMMIT_LENGTH],
        dirty=bool(git(root, "status", "--porcelain").stdout.strip()),
        run_type=_run_type(env, branch, pr_number, settings),
        pr_number=pr_number,
        build_id=_build_id(env),
        run_url=_run_url(env),
        detached=not git_branch,
    )


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


def git(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run git with an argument list (never a shell) in `root`."""
    try:
        result = subprocess.run(
            ["git", *args],
            cwd=root,
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="surrogateescape",
            check=False,
        )
    except FileNotFoundError as exc:
        raise BranchflowError(f"cannot run git in {root}: {exc.strerror}; install git") from exc
    if check and result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["no message"])[0]
        raise BranchflowError(f"git {' '.join(args)} failed in {root}: {reason}")
    return result


def _require_utf8_env(env: Mapping[str, str]) -> None:
    """Check that each variable the context reads is UTF-8 text (POSIX allows any bytes)."""
    for key in READ_VARIABLES:
        fix = "branchflow needs UTF-8 text: rename the branch, or fix or unset the variable"
        _require_utf8(f"${key}", env.get(key, ""), fix)


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
    """`BRANCHFLOW_COMMIT`, else HEAD (`GITHUB_SHA` is a merge commit for pull requests)."""
    explicit = env.get("BRANCHFLOW_COMMIT")
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


def _branch_from_env(env: Mapping[str, str]) -> str | None:
    """The first non-empty branch that a CI system reports, in order of precedence."""
    pull_ref = env.get("GITHUB_REF", "").startswith("refs/pull/")
    candidates = (
        env.get("BRANCHFLOW_BRANCH"),
        env.get("GITHUB_HEAD_REF"),  # pull requests: GITHUB_REF_NAME is then "<n>/merge"
        None if pull_ref else env.get("GITHUB_REF_NAME"),
        # Azure DevOps: the full ref keeps "feature/x" and "bugfix/x" apart; the name does not.
        _removeprefix_or_none(env.get("BUILD_SOURCEBRANCH"), "refs/heads/"),
        env.get("BUILD_SOURCEBRANCHNAME"),
        env.get("CI_COMMIT_REF_NAME"),
    )
    return next((candidate for candidate in candidates if candidate), None)


def _removeprefix_or_none(value: str | None, prefix: str) -> str | None:
    return value[len(prefix) :] if value and value.startswith(prefix) else None


def _pr_number(env: Mapping[str, str]) -> int | None:
    """`BRANCHFLOW_PR`, else `GITHUB_REF=refs/pull/<n>/...`, else the GitHub event payload."""
    explicit = env.get("BRANCHFLOW_PR")
    if explicit:
        if not re.fullmatch(r"[0-9]+", explicit):
            raise BranchflowError(f"BRANCHFLOW_PR={explicit!r} is not a number; set the PR number")
        return int(explicit)
    match = re.fullmatch(r"refs/pull/([0-9]+)/(?:merge|head)", env.get("GITHUB_REF", ""))
    if match:
        return int(match[1])
    return _pr_number_from_event(env)


def _pr_number_from_event(env: Mapping[str, str]) -> int | None:
    """`pull_request_target` runs on the base branch; only the payload names the PR."""
    path = env.get("GITHUB_EVENT_PATH")
    if env.get("GITHUB_EVENT_NAME") not in PR_EVENTS or not path:
        return None
    try:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BranchflowError(f"cannot read the GitHub event payload {path}: {exc}") from exc
    pull_request = payload.get("pull_request") if isinstance(payload, dict) else None
    number = pull_request.get("number") if isinstance(pull_request, dict) else None
    valid = isinstance(number, int) and not isinstance(number, bool) and number > 0
    return number if valid else None


def _run_type(
    env: Mapping[str, str], branch: str, pr_number: int | None, settings: Settings
) -> str:
    if pr_number is not None or env.get("GITHUB_EVENT_NAME") in PR_EVENTS:
        return "pr"
    in_ci = any(env.get(flag, "").lower() == "true" for flag in CI_FLAGS)
    if in_ci and branch == settings.main_branch:
        return "main"
    if in_ci and branch == settings.dev_branch:
        return "dev"
    return "local"


def _build_id(env: Mapping[str, str]) -> str | None:
    run_id = env.get("GITHUB_RUN_ID")
    if run_id:
        attempt = env.get("GITHUB_RUN_ATTEMPT", "")
        return f"{run_id}-{attempt}" if attempt.isdecimal() and int(attempt) > 1 else run_id
    return env.get("BUILD_BUILDID") or None


def _run_url(env: Mapping[str, str]) -> str | None:
    parts = [env.get(key) for key in ("GITHUB_SERVER_URL", "GITHUB_REPOSITORY", "GITHUB_RUN_ID")]
    if not all(parts):
        return None
    server, repository, run_id = parts
    return f"{server}/{repository}/actions/runs/{run_id}"
