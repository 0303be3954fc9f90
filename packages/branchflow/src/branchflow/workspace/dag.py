"""A project's DVC stages as steps in run order, with their inputs, outputs and digests: what
the pipelines' scopes, `check`, the report, `init`'s path filters and Azure ML's compiled jobs
are made from.

Read through DVC's own API (`Repo.index`), so `foreach`/`matrix` stages, `${}` templating and
params resolve as `dvc repro` resolves them. Nothing here needs DVC-tracked data or outputs.

A step's digest changes whenever `dvc repro` would rerun its stage: it hashes the resolved
command, the current values of the declared params, the md5 of each git-tracked dependency,
the md5 recorded in the `.dvc` file of each data dependency and, Merkle-style, the digest of
each upstream step. It is conservative in two cases: a dependency on part of a data source
counts the whole source, and an upstream rerun that writes identical bytes still counts.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from branchflow.errors import BranchflowError


@dataclass(frozen=True)
class DataSource:
    """An output of a `.dvc` file: data that enters the pipeline from a datastore."""

    path: str
    md5: str
    dvcfile: str
    name: str
    imported: bool  # from `dvc import` or `dvc import-url`: `dvc update` moves it upstream's way


@dataclass(frozen=True)
class Input:
    """A DVC output a step reads, linked at `path`; `producer` is None for a data source."""

    path: str
    name: str
    producer: str | None
    producer_output: str


@dataclass(frozen=True)
class Output:
    """A DVC output (`outs`, `metrics` or `plots`) a step writes.

    `returned` outputs become pipeline outputs that `submit --wait` downloads to their DVC
    paths: metrics, results no other stage reads, and the paths `read_dag` is asked to keep.
    """

    path: str
    name: str
    returned: bool
    metric: bool = False  # a DVC `metrics` file
    plot: bool = False  # a DVC `plots` output


@dataclass(frozen=True)
class ParamsFile:
    """A params file a step reads: only the declared `values` (nested), or all of it (None)."""

    path: str
    values: dict[str, Any] | None


@dataclass(frozen=True)
class Step:
    """One DVC stage, ready to become one Azure ML command node.

    `snapshot_paths` are its git-tracked dependencies (files or folders) and `params` its
    params files: together with the stage wrapper, exactly what its code snapshot holds.
    `wdir` is the folder its commands run in, from the repository root.
    """

    stage: str
    node: str
    dvcfile: str  # the dvc.yaml that defines it, from the repository root
    cmd: tuple[str, ...]
    wdir: str
    inputs: tuple[Input, ...]
    outputs: tuple[Output, ...]
    snapshot_paths: tuple[str, ...]
    params: tuple[ParamsFile, ...]
    digest: str
    always_changed: bool


@dataclass(frozen=True)
class Dag:
    """The steps in run order (upstream first) and the data sources they read."""

    steps: tuple[Step, ...]
    data: tuple[DataSource, ...]
    out_paths: tuple[str, ...]
    local_remotes: tuple[str, ...]
    # A dvc.yaml's top-level `metrics:` (what dvclive declares), from the repository root
    top_metrics: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # The committed default DVC remote, where it is storage a CI runner can push to and the next
    # build read from (a URL, not a folder on this machine); None otherwise
    shared_remote: str | None = None
    # The `artifacts:` of `type: model` in every dvc.yaml, their paths from the repository root
    model_artifacts: tuple[str, ...] = ()


def ident(text: str) -> str:
    """A name valid for Azure ML nodes, components, inputs and outputs: `[a-z][a-z0-9_]*`."""
    name = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
    return name if name[:1].isalpha() else f"s_{name}"


def read_dag(root: Path, keep: Collection[str] = ()) -> Dag:
    """Read the DVC pipeline of the repository at `root`; outputs at `keep` are returned."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo(str(root)) as repo:
            return _Reader(repo, set(keep)).dag()
    except DvcException as exc:
        raise BranchflowError(f"cannot read the DVC pipeline in {root}: {exc}") from exc


class _Reader:
    """Turns one `Repo.index` into a `Dag`, memoising producers and digests."""

    def __init__(self, repo: Any, keep: set[str]) -> None:
        self.repo, self.root, self.index = repo, Path(repo.root_dir), repo.index
        self.keep = keep
        self.index.check_graph()  # DVC's own errors for cycles and overlapping outputs
        stages = sorted(self.index.stages, key=lambda stage: stage.path_in_repo)  # stable
        self.pipeline = [stage for stage in stages if not stage.is_data_source]
        self.nodes: dict[str, str] = {}
        self.digests: dict[str, str] = {}
        self.sources: dict[str, DataSource] = {}

    def dag(self) -> Dag:
        order = self._run_order()
        for stage in order:
            _check_supported(stage, self.root)
        self.nodes = {stage_id(stage): ident(_node_text(stage)) for stage in order}
        _check_unique(self.nodes, "node")
        steps = self._mark_returned([self._step(stage) for stage in order])
        promoted = {o.path: o.name for step in steps for o in step.outputs if o.returned}
        _check_unique({**{s.path: s.name for s in self.sources.values()}, **promoted}, "name")
        outs = [self._rel(out.fs_path) for stage in self.index.stages for out in stage.outs]
        return Dag(
            steps=steps,
            data=tuple(self.sources[path] for path in sorted(self.sources)),
            out_paths=tuple(sorted(outs)),
            local_remotes=self._local_remotes(),
            top_metrics=self._top_metrics(),
            shared_remote=self._shared_remote(),
            model_artifacts=self._model_artifacts(),
        )

    def _top_metrics(self) -> dict[str, tuple[str, ...]]:
        """Each dvc.yaml's top-level `metrics:` files, from the repository root. DVC's index
        holds them by dvc.yaml, relative to its folder (as `dvc metrics show` reads them)."""
        found: dict[str, tuple[str, ...]] = {}
        for dvcfile, files in sorted(self.index._metrics.items()):
            folder = Path(self._rel(dvcfile)).parent
            found[self._rel(dvcfile)] = tuple(
                posixpath.normpath((folder / file).as_posix()) for file in files
            )
        return found

    def _mark_returned(self, steps: list[Step]) -> tuple[Step, ...]:
        """Return metrics, outputs no step reads, and the outputs asked to be kept."""
        read = {i.path for step in steps for i in step.inputs if i.producer}

        def mark(output: Output) -> Output:
            kept = output.path in self.keep or output.path not in read
            return replace(output, returned=output.returned or kept)

        return tuple(replace(step, outputs=tuple(map(mark, step.outputs))) for step in steps)

    def _run_order(self) -> list[Any]:
        """Pipeline stages, each after the stages it depends on; ties in dvc.yaml order."""
        order: list[Any] = []
        seen: set[str] = set()

        def visit(stage: Any) -> None:
            if stage_id(stage) in seen:
                return
            seen.add(stage_id(stage))
            for dep in stage.deps:
                for out in self._producers(dep):
                    if not out.stage.is_data_source:
                        visit(out.stage)
            order.append(stage)

        for stage in self.pipeline:
            visit(stage)
        return order

    def _producers(self, dep: Any) -> list[Any]:
        """Outputs that contain `dep` or lie inside it (as `dvc.repo.graph` matches them)."""
        key = dep.fs.parts(dep.fs_path)
        outs = [node.value for node in self.index.outs_trie.prefixes(key)]
        if self.index.outs_trie.has_subtrie(key):
            outs.extend(self.index.outs_trie.values(prefix=key))
        return list({id(out): out for out in outs}.values())

    def _step(self, stage: Any) -> Step:
        sid = stage_id(stage)
        inputs: dict[str, Input] = {}
        snapshot: list[str] = []
        params = [
            ParamsFile(self._rel(dep.fs_path), _declared_values(dep))
            for dep in stage.deps
            if _is_params(dep)
        ]
        for dep in stage.deps:
            producers = [] if _is_params(dep) else self._producers(dep)
            if not producers and not _is_params(dep):
                snapshot.append(self._rel(dep.fs_path))
            for out in producers:
                path = self._rel(out.fs_path)
                name = f"in_{ident(path)}"
                if out.stage.is_data_source:
                    dvcfile, imported = out.stage.path_in_repo, out.stage.is_import
                    source = DataSource(path, _md5(out), dvcfile, f"dvc_{ident(path)}", imported)
                    self.sources[path] = source
                    inputs[path] = Input(path, name, None, source.name)
                else:
                    producer = self.nodes[stage_id(out.stage)]
                    inputs[path] = Input(path, name, producer, f"out_{ident(path)}")
        paths = [self._rel(out.fs_path) for out in stage.outs]
        outputs = [
            Output(path, f"out_{ident(path)}", bool(out.metric), bool(out.metric), bool(out.plot))
            for path, out in zip(paths, stage.outs, strict=True)
        ]
        _check_unique(
            {**{i.path: i.name for i in inputs.values()}, **{o.path: o.name for o in outputs}},
            f"{sid} input/output",
        )
        cmd = stage.cmd if isinstance(stage.cmd, list) else stage.cmd.splitlines()  # as DVC
        return Step(
            stage=sid,
            node=self.nodes[sid],
            dvcfile=stage.path_in_repo,
            cmd=tuple(cmd),
            wdir=self._rel(stage.wdir),
            inputs=tuple(inputs.values()),
            outputs=tuple(outputs),
            snapshot_paths=tuple(dict.fromkeys(snapshot)),
            params=tuple(params),
            digest=self._digest(stage),
            always_changed=bool(stage.always_changed),
        )

    def _digest(self, stage: Any) -> str:
        sid = stage_id(stage)
        if sid not in self.digests:
            params = {dep.def_path: dep.get_hash().value for dep in stage.deps if _is_params(dep)}
            deps = [self._dep_entry(stage, dep) for dep in stage.deps if not _is_params(dep)]
            payload = {
                "cmd": stage.cmd,
                "params": params,
                "deps": sorted(deps, key=lambda entry: entry["path"]),
                "outs": sorted(self._rel(out.fs_path) for out in stage.outs),
            }
            text = json.dumps(payload, sort_keys=True, default=str)
            self.digests[sid] = hashlib.sha256(text.encode()).hexdigest()
        return self.digests[sid]

    def _dep_entry(self, stage: Any, dep: Any) -> dict[str, Any]:
        path = self._rel(dep.fs_path)
        producers = self._producers(dep)
        if not producers:
            if not dep.exists:
                raise BranchflowError(
                    f"{stage_id(stage)}: dependency {path} does not exist and no stage "
                    "produces it; add it to git or fix dvc.yaml"
                )
            return {"path": path, "md5": dep.get_hash().value}
        sources = [
            {"out": self._rel(out.fs_path), "md5": _md5(out)}
            if out.stage.is_data_source
            else {"out": self._rel(out.fs_path), "stage": self._digest(out.stage)}
            for out in producers
        ]
        return {"path": path, "from": sorted(sources, key=lambda entry: entry["out"])}

    def _local_remotes(self) -> tuple[str, ...]:
        """DVC remotes that are folders inside the repository (kept out of the snapshot)."""
        paths = []
        for remote in self.repo.config.get("remote", {}).values():
            url = str(remote.get("url", ""))
            if os.path.isabs(url) and Path(url).is_relative_to(self.root):
                paths.append(self._rel(url))
        return tuple(sorted(paths))

    def _model_artifacts(self) -> tuple[str, ...]:
        found = []
        for dvcfile, artifacts in sorted(self.index._artifacts.items()):
            folder = Path(self._rel(dvcfile)).parent
            for artifact in artifacts.values():
                if artifact.get("type") == "model" and artifact.get("path"):
                    found.append(posixpath.normpath((folder / artifact["path"]).as_posix()))
        return tuple(found)

    def _shared_remote(self) -> str | None:
        committed = self.repo.config.load_one("repo")  # not this machine's config.local
        name = committed.get("core", {}).get("remote")
        url = str(committed.get("remote", {}).get(name, {}).get("url", "")) if name else ""
        return name if re.match(r"[a-z][a-z0-9+.-]*://", url) else None

    def _rel(self, fs_path: str) -> str:
        return Path(os.path.relpath(fs_path, self.root)).as_posix()


def stage_id(stage: Any) -> str:
    """The stage's address from the repository root (`stage.addressing` depends on the cwd)."""
    name = getattr(stage, "name", None)
    if stage.path_in_repo == "dvc.yaml" and name:
        return name
    return f"{stage.path_in_repo}:{name}" if name else stage.path_in_repo


def _node_text(stage: Any) -> str:
    name = getattr(stage, "name", None)
    folder = str(Path(stage.path_in_repo).parent)
    if not name:
        return str(Path(stage.path_in_repo).with_suffix(""))
    return name if folder == "." else f"{folder}/{name}"


def _check_unique(names: dict[str, str], what: str) -> None:
    """Refuse two stages or paths whose Azure ML names (`ident`) coincide."""
    seen: dict[str, str] = {}
    for owner, name in names.items():
        if name in seen:
            raise BranchflowError(
                f"{seen[name]} and {owner} both become the Azure ML {what} '{name}'; "
                "rename one of them"
            )
        seen[name] = owner


def _check_supported(stage: Any, root: Path) -> None:
    """Refuse what the stage wrapper cannot reproduce, with the fix in the message."""
    sid = stage_id(stage)
    if not Path(stage.wdir).resolve().is_relative_to(root.resolve()):
        raise BranchflowError(
            f"{sid}: `wdir` {stage.wdir} is outside the repository; use a folder inside it"
        )
    if stage.frozen:
        raise BranchflowError(f"{sid}: frozen stages are not supported; `dvc unfreeze {sid}`")
    for item in [*stage.deps, *stage.outs]:
        if not item.is_in_repo:
            raise BranchflowError(
                f"{sid}: {item.def_path} is outside the repository; only repository paths "
                "can become Azure ML inputs and outputs"
            )
    for out in stage.outs:
        if out.persist:
            raise BranchflowError(
                f"{sid}: {out.def_path} has `persist: true`, but Azure ML outputs start "
                "empty; drop `persist`"
            )


def _is_params(dep: Any) -> bool:
    from dvc.dependency import ParamsDependency

    return isinstance(dep, ParamsDependency)


def _declared_values(dep: Any) -> dict[str, Any] | None:
    """The declared params of a params dependency, nested as in its file; None: all of it.

    Only YAML and JSON files are cut down to those keys; the others travel whole.
    """
    if not dep.params or Path(dep.fs_path).suffix not in (".yaml", ".yml", ".json"):
        return None
    return dep.read_params(flatten=False)


def _md5(out: Any) -> str:
    value = out.hash_info.value
    if not value:
        raise BranchflowError(
            f"{out.stage.path_in_repo}: {out.def_path} has no recorded md5; run `dvc commit`"
        )
    return str(value).removesuffix(".dir")
