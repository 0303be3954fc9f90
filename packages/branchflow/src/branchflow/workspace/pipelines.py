"""A project's pipelines: one per `dvc.yaml`, each with its own name, PR build and Azure ML job.

A pipeline is named `training` for the root `dvc.yaml` and by its folder otherwise
(`pipelines/scoring/dvc.yaml` is `scoring`), unless `[tool.branchflow.pipelines]` names it.
The name is the pipeline type in every name branchflow derives (`<type>_<base>_<branch>`).

`watched_paths` lists what a pipeline's PR build must watch: a change to any other file cannot
change what `dvc repro` of that pipeline does.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from branchflow.errors import BranchflowError
from branchflow.settings import (
    PIPELINE_NAME,
    PIPELINES_SECTION,
    GateSettings,
    ModelSettings,
    Settings,
)
from branchflow.workspace.context import data_version
from branchflow.workspace.dag import Dag, DataSource, Step
from branchflow.workspace.git import git
from branchflow.workspace.lock import LOCK_FILE, has_lock, requirements_files

ROOT_PIPELINE = "training"
DVCFILE = "dvc.yaml"
# What every pipeline's build also depends on: branchflow's settings (pyproject.toml, which
# `init` writes if the project has none) and, where they exist, how the project installs.
SETTINGS_FILE = "pyproject.toml"


@dataclass(frozen=True)
class Scope:
    """What `report` and `gate` judge: the metrics files (None: every one), the gate, whether
    the champion is compared with, the data sources whose version the report shows, and the
    plots it draws."""

    metrics_files: tuple[str, ...] | None
    gate: GateSettings
    has_model: bool
    data: tuple[DataSource, ...]
    lockfiles: tuple[str, ...] | None  # the dvc.lock files of its stages and upstream ones
    plots: tuple[str, ...] | None = None  # the names `dvc plots` gives its plots (None: all)

    @property
    def data_hash(self) -> str | None:
        return _version(self.data)


@dataclass(frozen=True)
class Pipeline:
    name: str
    dvcfile: str  # from the repository root

    @property
    def lockfile(self) -> str:
        return _lockfile(self.dvcfile)


def find_pipelines(root: Path, settings: Settings) -> tuple[Pipeline, ...]:
    """Every `dvc.yaml` git knows of, the root one first."""
    listed = git(root, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    files = [PurePosixPath(f) for f in listed.stdout.split("\0") if f]
    subrepos = sorted({f.parent.parent for f in files if f.parts[-2:] == (".dvc", "config")})
    subrepos = [folder for folder in subrepos if folder != PurePosixPath(".")]
    if subrepos:
        named = ", ".join(f"{folder}/" for folder in subrepos)
        raise BranchflowError(
            f"{named}: DVC subrepos (`dvc init --subdir`), each a DVC project of its own, which "
            "this repository's DVC does not run; branchflow builds one DVC project per git "
            "repository: move their pipelines into the root project, or give each its own "
            "repository"
        )
    dvcfiles = sorted(
        (f.as_posix() for f in files if f.name == DVCFILE), key=lambda f: (f != DVCFILE, f)
    )
    unknown = sorted(set(settings.pipelines) - set(dvcfiles))
    if unknown:
        raise BranchflowError(
            f"{PIPELINES_SECTION} names {', '.join(unknown)}, which git does not know; "
            f"dvc.yaml files: {', '.join(dvcfiles) or 'none'}"
        )
    found = tuple(Pipeline(settings.pipelines.get(f) or _default_name(f), f) for f in dvcfiles)
    names = [p.name for p in found]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise BranchflowError(
            f"several dvc.yaml files are the pipeline {', '.join(twice)}; name them in "
            f"{PIPELINES_SECTION}"
        )
    return found


def find_pipeline(root: Path, settings: Settings, name: str | None) -> Pipeline:
    """The pipeline called `name`; without a name, the project's only one or `training`."""
    found = find_pipelines(root, settings)
    if name is None and len(found) == 1:
        return found[0]
    wanted = name or ROOT_PIPELINE
    for pipeline in found:
        if pipeline.name == wanted:
            return pipeline
    raise BranchflowError(
        f"no pipeline {wanted!r}; pipelines: {', '.join(p.name for p in found) or 'none'} "
        "(one per dvc.yaml); pass --pipeline"
    )


def pipeline_steps(dag: Dag, pipeline: Pipeline) -> tuple[Step, ...]:
    """The steps of `pipeline`'s dvc.yaml and the steps upstream of them, in run order."""
    by_node = {step.node: step for step in dag.steps}
    wanted = {step.node for step in dag.steps if step.dvcfile == pipeline.dvcfile}
    pending = list(wanted)
    while pending:
        for item in by_node[pending.pop()].inputs:
            if item.producer and item.producer not in wanted:
                wanted.add(item.producer)
                pending.append(item.producer)
    return tuple(step for step in dag.steps if step.node in wanted)


def own_steps(dag: Dag, pipeline: Pipeline) -> tuple[Step, ...]:
    """The steps of `pipeline`'s own dvc.yaml, without upstream ones."""
    return tuple(step for step in dag.steps if step.dvcfile == pipeline.dvcfile)


def metrics_files(dag: Dag, pipeline: Pipeline) -> tuple[str, ...]:
    """The metrics files the pipeline's own stages declare, then its dvc.yaml's top-level
    `metrics:` (dvclive's layout): what a pipeline reports and gates."""
    declared = [o.path for step in own_steps(dag, pipeline) for o in step.outputs if o.metric]
    top = dag.top_metrics.get(pipeline.dvcfile, ())
    return tuple(dict.fromkeys([*declared, *top]))


def data_sources(dag: Dag, pipeline: Pipeline) -> tuple[DataSource, ...]:
    """The `.dvc` data sources that the pipeline's stages, or their upstream stages, read."""
    read = {i.path for step in pipeline_steps(dag, pipeline) for i in step.inputs if not i.producer}
    return tuple(source for source in dag.data if source.path in read)


def data_hash(dag: Dag, pipeline: Pipeline) -> str | None:
    """The pipeline's data version: what `register` and `azureml submit` tag runs with."""
    return _version(data_sources(dag, pipeline))


def _version(sources: Iterable[DataSource]) -> str | None:
    return data_version((source.path, source.md5) for source in sources)


def model_pipeline(
    settings: Settings, dag: Dag, pipelines: tuple[Pipeline, ...]
) -> Pipeline | None:
    """The pipeline whose stages write the registered model's artifacts, if any."""
    artifacts = set(settings.model.artifacts.values()) if settings.model else set()
    for pipeline in pipelines:
        if artifacts & {o.path for step in own_steps(dag, pipeline) for o in step.outputs}:
            return pipeline
    return None


def scope(root: Path, settings: Settings, dag: Dag, name: str | None) -> Scope:
    """The pipeline `name` as `report` and `gate` see it: its own metrics files, its gate
    `[tool.branchflow.gates.<name>]` (for the model's pipeline, else `[tool.branchflow.gate]`)
    and, for the model's pipeline, the champion. Without a name: the model's pipeline, or,
    when no pipeline writes the model, every metric with `[tool.branchflow.gate]`."""
    found = find_pipelines(root, settings)
    unknown = sorted(set(settings.gates) - {pipeline.name for pipeline in found})
    if unknown:
        raise BranchflowError(
            f"[tool.branchflow.gates] names {', '.join(unknown)}, which is no pipeline; "
            f"pipelines: {', '.join(p.name for p in found)}"
        )
    model = model_pipeline(settings, dag, found)
    if name is None and model is None:
        return Scope(None, settings.gate, True, dag.data, None)
    pipeline = find_pipeline(root, settings, name) if name is not None else model
    assert pipeline is not None  # a name finds its pipeline; without one, the model's exists
    own = own_steps(dag, pipeline)
    metrics = metrics_files(dag, pipeline)
    if not metrics:
        raise BranchflowError(
            f"{pipeline.dvcfile} declares no metrics files, so pipeline {pipeline.name} has "
            "nothing to report or gate; declare them under `metrics:` in its stages or at its top "
            "level, as dvclive does"
        )
    main = pipeline == model or model is None  # the project's own gate and champion apply
    return Scope(
        metrics_files=metrics,
        gate=settings.gates.get(pipeline.name, settings.gate if main else GateSettings()),
        has_model=main,
        data=data_sources(dag, pipeline),
        lockfiles=tuple(
            sorted({_lockfile(step.dvcfile) for step in pipeline_steps(dag, pipeline)})
        ),
        plots=plot_names(root, own, pipeline),
    )


def plot_names(root: Path, steps: Iterable[Step], pipeline: Pipeline) -> tuple[str, ...]:
    """The names `dvc plots` gives a pipeline's plots: the ids and paths (from the root) of
    its dvc.yaml's top-level `plots`, and the plot outputs of its stages `steps`."""
    import yaml

    folder = PurePosixPath(pipeline.dvcfile).parent
    document = yaml.safe_load((root / pipeline.dvcfile).read_text(encoding="utf-8")) or {}
    names = [output.path for step in steps for output in step.outputs if output.plot]
    for entry in document.get("plots") or []:
        for key in [entry] if isinstance(entry, str) else list(entry):
            path = (folder / key).as_posix()
            names.append(path if isinstance(entry, str) or (root / path).exists() else key)
    return tuple(dict.fromkeys(names))


def watched_paths(
    root: Path, dag: Dag, pipeline: Pipeline, model: ModelSettings | None
) -> tuple[str, ...]:
    """What the pipeline's PR build watches (GitHub `paths` filters): its dvc.yaml and
    dvc.lock, the code, params and `.dvc` files its stages and their upstream stages read,
    the project's install files, and, when it writes the registered model, what else goes
    into the model's package. A folder is watched as `<folder>/**`."""
    steps = pipeline_steps(dag, pipeline)
    outputs = {output.path for step in steps for output in step.outputs}
    package = model.source_files if model and set(model.artifacts.values()) & outputs else ()
    origins = {source.path: source.dvcfile for source in dag.data}
    paths = {
        pipeline.dvcfile,
        pipeline.lockfile,
        SETTINGS_FILE,
        *([LOCK_FILE] if has_lock(root) else []),
        *requirements_files(root),
    }
    for step in steps:
        paths |= {step.dvcfile, _lockfile(step.dvcfile)}
        paths |= {params.path for params in step.params}
        paths |= {origins[i.path] for i in step.inputs if i.producer is None}
        paths |= set(step.snapshot_paths)
    paths |= set(package)
    folders = {path for path in paths if (root / path).is_dir()}
    inside = {path for path in paths for folder in folders if path.startswith(f"{folder}/")}
    return tuple(sorted(f"{p}/**" if p in folders else p for p in paths - inside))


def _lockfile(dvcfile: str) -> str:
    return str(PurePosixPath(dvcfile).with_name("dvc.lock"))


def _default_name(dvcfile: str) -> str:
    folder = PurePosixPath(dvcfile).parent
    if folder == PurePosixPath("."):
        return ROOT_PIPELINE
    name = folder.name.lower().replace("_", "-")
    if not PIPELINE_NAME.fullmatch(name):
        raise BranchflowError(
            f"{dvcfile}: its folder gives no valid pipeline name; name it in {PIPELINES_SECTION}"
        )
    return name
