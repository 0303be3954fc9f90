"""What a branch changed against its base, read from DVC, git and the MLflow registry.

Metrics and params come from DVC's own diffs (`repo.metrics.diff`, `repo.params.diff`), which
read the base's files from git or, for cached outputs, from DVC's cache or remote; base metrics
that none of these holds come from the MLflow run `branchflow register` logged for the base
commit; which stages reran comes from the base commit's `dvc.lock` files against the
workspace's, the record DVC itself decides reruns from; the champion's metrics come from its
MLflow run and version tags.
"""

from __future__ import annotations

import math
import os
import posixpath
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from branchflow.errors import BranchflowError
from branchflow.paired import Units, read_units
from branchflow.workspace.context import data_version
from branchflow.workspace.git import git
from branchflow.workspace.naming import qualified_names

if TYPE_CHECKING:
    from dvc.repo import Repo
    from mlflow.entities import Run

    from branchflow.settings import UnitSettings
    from branchflow.tracking import Store

LOCK_FILE = "dvc.lock"
PIPELINE_FILE = "dvc.yaml"
METRIC_TAG = "metric."
WORKSPACE = "workspace"


FULL_SHA = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class Base:
    """The git ref a branch is compared with, and the commit it resolved to."""

    ref: str
    commit: str


@dataclass(frozen=True)
class Champion:
    """The production model version under the `champion` alias, with its metrics."""

    model: str
    version: str
    metrics: Mapping[str, float]
    run_id: str | None = None  # its run, which holds the per-unit results it was scored with


@dataclass(frozen=True)
class Metric:
    """One metric on this branch and the base; `change` is DVC's diff (None if a side lacks it)."""

    name: str
    value: float | None
    base: float | None
    change: float | None


@dataclass(frozen=True)
class UnitTables:
    """The per-unit results (`[tool.branchflow.gate.units]`) of this branch, the base and the
    champion; `missing` says why the base or the champion has none."""

    branch: Units
    base: Units | None
    champion: Units | None
    missing: Mapping[str, str]


@dataclass(frozen=True)
class Comparison:
    """This branch's metrics beside the base's and the champion's.

    `base_found` is False when the base has no metrics; `base_missing` says why, when the base
    produced metrics (its `dvc.lock` records them) that cannot be read here, and is None for a
    genuine first run; `base_run` is the MLflow run the base's metrics came from, when DVC could
    not read them (None: DVC read them); `champion_missing` says why there is no champion, when
    there is none; `invalid` names each of this branch's metrics that is not a finite number,
    and what its file holds.
    """

    base: Base | None
    metrics: tuple[Metric, ...]
    base_found: bool
    champion: Champion | None
    champion_missing: str | None
    invalid: Mapping[str, str] = field(default_factory=dict)
    base_missing: str | None = None
    base_run: str | None = None
    base_experiment: str | None = None  # the experiment of `base_run`
    units: UnitTables | None = None  # with `[tool.branchflow.gate.units]`


@dataclass(frozen=True)
class ParamChange:
    """A param whose value differs from the base (None: absent on that side)."""

    name: str
    old: object
    new: object


@dataclass(frozen=True)
class StageChange:
    """Whether a stage reran since the base (`rerun`, `reused`, `new`, `removed`), and why."""

    stage: str
    status: str
    reasons: tuple[str, ...]


def default_base(env: Mapping[str, str] = os.environ) -> str | None:
    """`origin/$GITHUB_BASE_REF` in a GitHub pull request, else None (no base comparison)."""
    branch = env.get("GITHUB_BASE_REF")
    return f"origin/{branch}" if branch else None


def resolve_base(root: Path, ref: str, *, fetch: bool = False, branch: str | None = None) -> Base:
    """Resolve `ref` to a commit; a shallow clone without it fetches it only when `fetch`. A
    PR build passes its base commit's full SHA (`$BASE_SHA`): with the PR's base `branch`, the
    base is shown by that name (and its short SHA, where the report shows commits)."""
    commit = _rev_parse(root, ref)
    if commit is None:
        remote, branch = _split_remote(root, ref)
        if fetch:
            refspec = f"+refs/heads/{branch}:refs/remotes/{remote}/{branch}"
            git(root, "fetch", "-q", "--depth=1", remote, refspec)
            commit = _rev_parse(root, ref) or _rev_parse(root, f"{remote}/{branch}")
        if commit is None:
            raise BranchflowError(
                f"base ref '{ref}' is not in this clone; fetch it with: "
                f"git fetch --depth=1 {remote} {branch}"
            )
    return Base(branch if branch and FULL_SHA.fullmatch(ref) else ref, commit)


@contextmanager
def open_dvc(root: Path) -> Iterator[Repo]:
    """The DVC project at `root`."""
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    try:
        repo = Repo(str(root))
    except NotDvcRepoError as exc:
        raise BranchflowError(f"{root} is not a DVC project; run branchflow in its root") from exc
    with repo:
        yield repo


def compare(
    repo: Repo,
    base: Base | None,
    production_model: str | None,
    env: Mapping[str, str],
    targets: Sequence[str] | None = None,
    units: UnitSettings | None = None,
) -> Comparison:
    """This branch's metrics (of the metrics files `targets`, else all) against the base's
    (DVC's diff) and the `production_model` champion's (MLflow; None: no champion), and with
    `units`, the three sides' per-unit results.

    With a `production_model` (the scope `branchflow register` logs), base metrics files that
    DVC cannot read come from the base commit's registered run (`find_base_run`)."""
    if targets is not None:  # DVC reads targets from the working directory
        targets = [os.path.join(repo.root_dir, target) for target in targets]
    shown = repo.metrics.show(targets, revs=[WORKSPACE], hide_workspace=False)[WORKSPACE]
    files = [path for path, result in shown.get("data", {}).items() if "data" in result]
    raw = {path: _metrics_file(repo, path) for path in files}
    current = {path: _numbers(values) for path, values in raw.items()}
    bad = {
        (path, name): f"{_shorten(value)} ({type(value).__name__})"
        for path, values in raw.items()
        for name, value in values.items()
        if name not in current[path]
    }
    if not any(current.values()) and not bad:
        problems = shown.get("error") or {p: r["error"] for p, r in shown.get("data", {}).items()}
        raise BranchflowError(
            f"no metrics in the workspace ({problems or 'none declared in dvc.yaml'}); "
            "run `dvc repro` first"
        )
    root = Path(repo.root_dir)
    diffs: dict[str, dict[str, dict[str, Any]]] = {}
    lost: list[str] = []
    if base is not None:
        diff = repo.metrics.diff(a_rev=base.commit, b_rev=WORKSPACE, targets=targets, all=True)
        diffs = diff.get("diff", {})
        lost = _lost(root, base, diff.get("errors", {}).get(base.commit))
    rows: dict[tuple[str, str], tuple[float | None, float | None, float | None]] = {}
    for path, values in current.items():
        for name, value in values.items():
            entry = diffs.get(path, {}).get(name, {})
            rows[path, name] = (value, _number(entry.get("old")), entry.get("diff"))
    for path, entries in diffs.items():
        for name, entry in entries.items():
            old = _number(entry.get("old"))
            if (path, name) not in rows and old is not None:
                rows[path, name] = (None, old, None)
    names = _row_names(rows, bad)
    missing = run_id = experiment = None
    if base is not None and lost:
        store = configured_store(root, env) if production_model else None
        found = find_base_run(root, store, base.commit, env) if store else None
        run = found[0] if found else None
        filled = _with_base(rows, names, run.data.metrics) if run else rows
        if found and filled != rows:
            rows, run_id, experiment = filled, found[0].info.run_id, found[1]
        else:
            missing = _unreadable(base, lost, _searched(store, run) if store else None)
    metrics = tuple(Metric(names[key], *row) for key, row in rows.items())
    champion, no_champion = (
        find_champion(root, production_model, env)
        if production_model
        else (None, "this pipeline registers no model")
    )
    tables = unit_tables(repo, units, base, champion) if units else None
    return Comparison(
        base=base,
        metrics=metrics,
        base_found=any(metric.base is not None for metric in metrics),
        champion=champion,
        champion_missing=no_champion,
        invalid={names[path, name]: f"{what} in {path}" for (path, name), what in bad.items()},
        base_missing=missing,
        base_run=run_id,
        base_experiment=experiment,
        units=tables,
    )


def unit_tables(
    repo: Repo, units: UnitSettings, base: Base | None, champion: Champion | None
) -> UnitTables:
    """The per-unit results of the workspace, of the base commit (from git, or DVC's cache or
    remote for a cached output) and of the champion's run."""
    from dvc.fs import DVCFileSystem

    path = units.file
    local = Path(repo.root_dir, path)
    if not local.is_file():
        from branchflow.tracking import missing_output

        raise BranchflowError(f"{missing_output(repo, path)} (the gate's units file)")
    branch = _units(local.read_text(encoding="utf-8"), units.key, path)
    missing: dict[str, str] = {}
    base_units = champion_units = None
    if base is not None:
        try:
            text = DVCFileSystem(repo=repo.root_dir, rev=base.commit).read_text(
                path, encoding="utf-8"
            )
        except FileNotFoundError:
            missing["base"] = f"{base.ref} has no {path}"
        else:
            base_units = _units(text, units.key, f"{path} at {base.ref}")
    if champion is not None:
        text = _run_file(champion.run_id, path)
        if text is None:
            missing["champion"] = f"champion v{champion.version}'s run has no {path}"
        else:
            champion_units = _units(text, units.key, f"{path} of champion v{champion.version}")
    return UnitTables(branch, base_units, champion_units, missing)


def _units(text: str, key: str, source: str) -> Units:
    try:
        return read_units(text, key, source)
    except ValueError as exc:
        raise BranchflowError(f"{exc}; fix the stage that writes it") from None


def _run_file(run_id: str | None, path: str) -> str | None:
    """The text of the artifact `path` of MLflow run `run_id`, or None when it has none."""
    import tempfile

    import mlflow
    from mlflow.exceptions import MlflowException

    if run_id is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=path, dst_path=tmp
            )
            return Path(local).read_text(encoding="utf-8")
        except (MlflowException, OSError):
            return None


def _lost(root: Path, base: Base, errors: Mapping[str, Exception] | None) -> list[str]:
    """The base's metrics files that its `dvc.lock` files record but DVC could not read (from
    neither git, the cache nor a remote); empty when all could be, or none was produced."""
    produced = {
        out["path"]
        for entry in _pipeline(root, base.commit).values()
        for out in entry.get("outs", [])
    }
    return sorted(path for path in (errors or {}) if path in produced)


def _unreadable(base: Base, lost: Sequence[str], searched: str | None = None) -> str:
    """Why the base's metrics files `lost` cannot be read, and how to fix it; `searched` says
    what was looked for in MLflow (None: no registry was asked)."""
    where = "git, this DVC cache nor its remote"
    if searched:
        where = f"git, this DVC cache, its remote nor {searched}"
    return (
        f"the base's metrics ({', '.join(lost)} at {base.ref}, {base.commit[:7]}) are in neither "
        f"{where}: run `dvc fetch --all-branches --type metrics` with the remote that holds "
        f"them, or `dvc push`{' or `branchflow register`' if searched else ''} from the base's "
        "build"
    )


def configured_store(root: Path, env: Mapping[str, str]) -> Store | None:
    """The MLflow registry `branchflow register` would use (`$MLFLOW_TRACKING_URI`, else the
    project's `mlflow.db`), or None when neither is there."""
    from branchflow.tracking import LOCAL_DB, store_for

    if not env.get("MLFLOW_TRACKING_URI") and not (root / LOCAL_DB).is_file():
        return None
    return store_for(root, env)


def find_base_run(
    root: Path, store: Store, commit: str, env: Mapping[str, str]
) -> tuple[Run, str] | None:
    """The newest finished run that `branchflow register` logged for `commit` from a clean
    workspace, and its experiment's name; None if none. Only the experiments of the builds of
    `main_branch` and `dev_branch` count: any token may log a run tagged with any commit in an
    experiment of its own, but only those builds write theirs (see docs/registry.md)."""
    from mlflow.entities import ViewType

    from branchflow.settings import load_settings
    from branchflow.tracking import COMMIT_TAG, DIRTY_TAG, connect, mlflow_errors
    from branchflow.workspace.context import resolve_context
    from branchflow.workspace.naming import names_on

    query = (
        f"tags.{COMMIT_TAG} = '{commit}' and tags.{DIRTY_TAG} = 'false' "
        "and attributes.status = 'FINISHED'"
    )
    newest = ["attributes.start_time DESC"]
    settings = load_settings(root)
    context = resolve_context(root, env, settings)
    branches = dict.fromkeys((settings.main_branch, settings.dev_branch))
    trusted = [names_on(context, settings, branch).experiment for branch in branches]
    client = connect(store)
    with mlflow_errors(store):
        found = [client.get_experiment_by_name(name) for name in trusted]
        experiments = {
            e.experiment_id: e.name for e in found if e and e.lifecycle_stage == "active"
        }
        if not experiments:
            return None
        runs = client.search_runs(list(experiments), query, ViewType.ACTIVE_ONLY, 1, newest)
    return (runs[0], experiments[runs[0].info.experiment_id]) if runs else None


def _searched(store: Store, run: Run | None) -> str:
    """What the MLflow lookup of the base's metrics looked for, for `_unreadable`."""
    if run is None:
        return (
            "a finished `branchflow register` run of that commit from a clean workspace in "
            f"the main or dev branch's experiment in MLflow at {store.uri}"
        )
    return (
        f"MLflow run {run.info.run_id} of that commit at {store.uri}, which has none of this "
        "branch's metrics"
    )


def _with_base(
    rows: Mapping[tuple[str, str], tuple[float | None, float | None, float | None]],
    names: Mapping[tuple[str, str], str],
    metrics: Mapping[str, float],
) -> dict[tuple[str, str], tuple[float | None, float | None, float | None]]:
    """`rows` with each base that DVC lacks taken from `metrics` (by qualified name), and its
    change."""
    filled = dict(rows)
    for key, (value, old, _) in rows.items():
        found = metrics.get(names[key])
        if old is None and value is not None and found is not None:
            filled[key] = (value, found, value - found)
    return filled


def _metrics_file(repo: Repo, path: str) -> dict[str, object]:
    """Every value of a metrics file by dotted key, as written: DVC's own reader drops lists
    and nulls, which the gate must name rather than call missing."""
    from dvc.utils.flatten import flatten
    from dvc.utils.serialize import load_path

    document = load_path(os.path.join(repo.root_dir, path), repo.fs)
    if not isinstance(document, dict):
        raise BranchflowError(
            f"{path}: a metrics file must hold a table of name: number, found "
            f"{_shorten(document)}; fix the stage that writes it"
        )
    return flatten(document)


def _shorten(value: object, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else f"{text[: width - 3]}..."


def changed_params(repo: Repo, base: Base) -> list[ParamChange]:
    """The params whose values differ from the base, from `dvc params diff`."""
    diffs = repo.params.diff(a_rev=base.commit, b_rev=WORKSPACE, all=True).get("diff", {})
    entries = {
        (path, name): entry for path, names in diffs.items() for name, entry in names.items()
    }
    names = qualified_names(entries)
    return [
        ParamChange(names[key], e.get("old"), e.get("new"))
        for key, e in entries.items()
        if e.get("old") != e.get("new")
    ]


def stage_changes(
    root: Path, base: Base, lockfiles: Collection[str] | None = None, log: str | None = None
) -> list[StageChange]:
    """Each stage of the workspace's `dvc.lock` files (`lockfiles`, else every one) against
    the base's: unchanged (`reused`), or rerun and why. A lock entry of a stage its dvc.yaml no
    longer defines (DVC leaves those behind) is no stage, here or at the base.

    With `log`, what `dvc repro` printed in this build, a changed stage is `rerun` only if it
    ran, `restored` if DVC restored it from the run-cache, and `not run` if neither (its lock
    entry is the one committed)."""
    current = _defined(root, None, _pipeline(root, None, lockfiles))
    old = _defined(root, base.commit, _pipeline(root, base.commit, lockfiles))
    producers = {
        out["path"]: name for name, entry in current.items() for out in entry.get("outs", [])
    }
    changes = []
    for name, entry in current.items():
        if name not in old:
            changes.append(StageChange(name, "new", (f"not in {base.ref}'s {_lock_of(name)}",)))
            continue
        reasons = _why_rerun(entry, old[name], producers)
        changes.append(StageChange(name, "rerun" if reasons else "reused", tuple(reasons)))
    changes += [StageChange(name, "removed", ()) for name in old if name not in current]
    if log is None:
        return changes
    ran = {match["stage"] for match in RAN.finditer(log)}
    restored = {match["stage"] for match in RESTORED.finditer(log)}
    return [_as_built(change, ran, restored) for change in changes]


RAN = re.compile(r"^Running stage '(?P<stage>[^']+)':$", re.MULTILINE)
RESTORED = re.compile(r"^Stage '(?P<stage>[^']+)' is cached - skipping run", re.MULTILINE)


def _as_built(change: StageChange, ran: set[str], restored: set[str]) -> StageChange:
    """`change`, a changed stage's status said as this build made it: the stages DVC printed it
    `ran` and `restored` (addresses from the root, as `dvc repro` run there prints them)."""
    if change.status not in ("rerun", "new") or change.stage in ran:
        return change
    built = "restored" if change.stage in restored else "not run"
    return StageChange(change.stage, built, change.reasons)


def data_versions(
    root: Path, base: Base | None, dvcfiles: Collection[str]
) -> tuple[str | None, str | None]:
    """The data version (`context.data_version`) of the `.dvc` files `dvcfiles` (a pipeline's
    data sources: `workspace.pipelines.data_sources`) in the workspace and at the base."""
    current = data_version(_data_sources(root, None, dvcfiles))
    return current, data_version(_data_sources(root, base.commit, dvcfiles)) if base else None


def _data_sources(
    root: Path, commit: str | None, dvcfiles: Collection[str]
) -> list[tuple[str, str]]:
    """(path, md5) of the outputs of `dvcfiles`, in the workspace or in `commit`."""
    documents = _documents(root, commit, lambda file: _dvc(file) and file in dvcfiles)
    return [
        (posixpath.join(posixpath.dirname(file), out["path"]), out["md5"])
        for file, document in documents.items()
        for out in (document.get("outs", []) if isinstance(document, dict) else [])
        if out.get("path") and out.get("md5")
    ]


def _documents(root: Path, commit: str | None, wanted: Callable[[str], bool]) -> dict[str, Any]:
    """The YAML document of every git file that is `wanted`, in the workspace or in `commit`."""
    if commit is None:
        listed = git(root, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
        return {f: _read_file(root / f) for f in listed.stdout.split("\0") if wanted(f)}
    listed = git(root, "ls-tree", "-r", "-z", "--name-only", commit)
    return {f: _git_show(root, commit, f) for f in listed.stdout.split("\0") if wanted(f)}


def _dvc(file: str) -> bool:
    return file.endswith(".dvc") and not file.startswith(".dvc/")


def _lock(file: str) -> bool:
    return posixpath.basename(file) == LOCK_FILE


def _pipeline(
    root: Path, commit: str | None, lockfiles: Collection[str] | None = None
) -> dict[str, dict[str, Any]]:
    """Every stage of every `dvc.lock` (of `lockfiles`, if given), in the workspace or in
    `commit`, by DVC's address (`name` at the root, `folder/dvc.yaml:name` below it), with
    repository-relative paths."""
    wanted = _lock if lockfiles is None else (lambda file: _lock(file) and file in lockfiles)
    stages: dict[str, dict[str, Any]] = {}
    for file, lock in sorted(_documents(root, commit, wanted).items()):
        folder = posixpath.dirname(file)
        prefix = f"{posixpath.join(folder, PIPELINE_FILE)}:" if folder else ""
        stages |= {prefix + name: _rooted(entry, folder) for name, entry in _stages(lock).items()}
    return stages


def _defined(
    root: Path, commit: str | None, entries: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """The lock `entries` whose stage its dvc.yaml defines (`name@item` by its `name`)."""
    yamls = {_yaml_of(stage) for stage in entries}
    documents = _documents(root, commit, lambda file: file in yamls)
    defined = {(file, name) for file, document in documents.items() for name in _stages(document)}
    return {
        stage: entry
        for stage, entry in entries.items()
        if (_yaml_of(stage), stage.rpartition(":")[2].partition("@")[0]) in defined
    }


def _yaml_of(stage: str) -> str:
    """The `dvc.yaml` that defines `stage` (an address as `_pipeline` gives it)."""
    return posixpath.join(posixpath.dirname(_lock_of(stage)), PIPELINE_FILE)


def _lock_of(stage: str) -> str:
    """The `dvc.lock` that records `stage` (an address as `_pipeline` gives it)."""
    folder = posixpath.dirname(stage.rpartition(":")[0])
    return posixpath.join(folder, LOCK_FILE)


def _rooted(entry: Mapping[str, Any], folder: str) -> dict[str, Any]:
    """A lock entry with its deps' and outs' paths relative to the repository, not `folder`."""
    moved = {
        key: [{**item, "path": posixpath.join(folder, item["path"])} for item in entry[key]]
        for key in ("deps", "outs")
        if key in entry
    }
    return {**entry, **moved}


def find_champion(
    root: Path, model: str, env: Mapping[str, str]
) -> tuple[Champion | None, str | None]:
    """The `champion` version of the production `model` and its metrics, or None and why.

    A registry is configured by `$MLFLOW_TRACKING_URI` or a local `mlflow.db`; one that is
    configured but unreachable is an error. Metrics come from the version's run, and its
    `metric.<name>` tags (written by `branchflow register`) fill in what the run lacks.
    """
    from branchflow.registry.champion import CHAMPION, current_champion
    from branchflow.tracking import LOCAL_DB, connect, mlflow_errors

    store = configured_store(root, env)
    if store is None:
        return None, f"no MLflow registry configured (MLFLOW_TRACKING_URI unset, no {LOCAL_DB})"
    client = connect(store)
    with mlflow_errors(store):
        version = current_champion(client, model)
        if version is None:
            return None, f"no `{model}@{CHAMPION}` in the MLflow registry at {store.uri}"
        run_metrics = client.get_run(version.run_id).data.metrics if version.run_id else {}
    tagged = {
        key.removeprefix(METRIC_TAG): _float(value)
        for key, value in (version.tags or {}).items()
        if key.startswith(METRIC_TAG)
    }
    metrics = {key: value for key, value in tagged.items() if value is not None} | run_metrics
    return Champion(model, str(version.version), metrics, version.run_id), None


def _rev_parse(root: Path, ref: str) -> str | None:
    result = git(root, "rev-parse", "--verify", "-q", f"{ref}^{{commit}}", check=False)
    return result.stdout.strip() if result.returncode == 0 else None


def _split_remote(root: Path, ref: str) -> tuple[str, str]:
    """`origin/main` -> (`origin`, `main`); a ref without a known remote is on `origin`."""
    remotes = git(root, "remote", check=False).stdout.split()
    for remote in remotes:
        if ref.startswith(f"{remote}/"):
            return remote, ref[len(remote) + 1 :]
    return "origin", ref


def _git_show(root: Path, commit: str, path: str) -> Any:
    """The YAML document at `path` in `commit`, or None where it has none."""
    result = git(root, "show", f"{commit}:{path}", check=False)
    return yaml.safe_load(result.stdout) if result.returncode == 0 else None


def _read_file(path: Path) -> Any:
    """The YAML document at `path`, or None where there is none."""
    return yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None


def _stages(lock: Any) -> dict[str, dict[str, Any]]:
    return dict(lock.get("stages", {})) if isinstance(lock, dict) else {}


def _why_rerun(
    entry: Mapping[str, Any], old: Mapping[str, Any], producers: Mapping[str, str]
) -> list[str]:
    """What differs between two lock entries of a stage: its command, deps and params."""
    reasons = ["command changed"] if entry.get("cmd") != old.get("cmd") else []
    new_deps, old_deps = _deps(entry), _deps(old)
    for path in sorted(new_deps.keys() | old_deps.keys()):
        if path not in old_deps:
            reasons.append(f"new dep `{path}`")
        elif path not in new_deps:
            reasons.append(f"dep `{path}` removed")
        elif new_deps[path] != old_deps[path]:
            source = f" (output of `{producers[path]}`)" if path in producers else ""
            reasons.append(f"`{path}` changed{source}")
    new_params, old_params = _params(entry), _params(old)
    for key in sorted(new_params.keys() | old_params.keys()):
        before, after = old_params.get(key), new_params.get(key)
        if before != after:
            reasons.append(f"param `{key}` {before} → {after}")
    if not reasons and entry != old:
        reasons.append("outputs changed with the same inputs")
    return reasons


def _deps(entry: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        dep["path"]: {k: v for k, v in dep.items() if k != "path"} for dep in entry.get("deps", [])
    }


def _params(entry: Mapping[str, Any]) -> dict[str, object]:
    """The stage's params by dotted name (`train: {epochs: 3}` gives `train.epochs`)."""
    from dvc.utils.flatten import flatten

    by_file = entry.get("params", {}).values()
    return {key: value for values in by_file for key, value in flatten(values).items()}


def _row_names(
    rows: Mapping[tuple[str, str], tuple[float | None, ...]], bad: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], str]:
    """The workspace's metrics named as `register` names them (from the workspace's files
    alone); a metric only the base has gets its file when its key collides with one of them."""
    workspace = [key for key, (value, *_) in rows.items() if value is not None]
    names = qualified_names([*workspace, *bad])
    gone = [key for key in rows if key not in names]
    return names | {
        key: name for key, name in qualified_names([*names, *gone]).items() if key in gone
    }


def _numbers(values: Mapping[str, object]) -> dict[str, float]:
    """The finite numbers among `values`."""
    numbers = {key: _number(value) for key, value in values.items()}
    return {key: n for key, n in numbers.items() if n is not None and math.isfinite(n)}


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None
