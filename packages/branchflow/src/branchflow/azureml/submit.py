"""Submit the compiled pipeline to Azure ML under this branch's names and tags.

The workspace comes from `AZURE_SUBSCRIPTION_ID`, `AZURE_RESOURCE_GROUP` and
`AZUREML_WORKSPACE`; credentials from `DefaultAzureCredential` (in GitHub Actions, OIDC via
`azure/login`; locally, `az login`). The committed YAML never names a branch or commit: the
experiment, display name and tags are applied here, from `branchflow.workspace.context`.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from branchflow.azureml.compile import (
    COMPUTES,
    CPU_ENVIRONMENT_FILE,
    DATA,
    ENVIRONMENT_FILE,
    compile_project,
    data_asset_name,
    pipeline_file,
    promoted,
)
from branchflow.azureml.plan import (
    PLAN_TAG,
    NodeState,
    Verdict,
    node_states,
    plan,
    recorded,
    upstream_nodes,
)
from branchflow.azureml.plan import tags as plan_tags
from branchflow.azureml.upload import upload_source
from branchflow.azureml.validate import validate
from branchflow.errors import BranchflowError, first_line
from branchflow.settings import load_settings
from branchflow.workspace.context import resolve_context
from branchflow.workspace.naming import names_for
from branchflow.workspace.params import set_params
from branchflow.workspace.pipelines import data_hash, find_pipeline, pipeline_steps

WORKSPACE_VARIABLES = ("AZURE_SUBSCRIPTION_ID", "AZURE_RESOURCE_GROUP", "AZUREML_WORKSPACE")
FAILED = frozenset({"Failed", "Canceled", "NotResponding"})
STUCK = frozenset({"Paused", "Unknown"})  # states a job does not leave by itself
# The run property of a reused node, as azure-ai-ml reads it (PipelineConstants, not public).
REUSED = ("azureml.isreused", "true")
POLL_SECONDS = 20


@dataclass(frozen=True)
class DataUpload:
    """A DVC data source and the data asset that holds it on Azure ML."""

    asset: Path  # its generated data/<name>.yml
    local: Path  # its DVC path in the workspace
    dvcfile: str
    prefix: str  # where in the datastore: <data_prefix>/<md5>


@dataclass(frozen=True)
class Submission:
    """The job exactly as it will be submitted, what it needs provisioned first, and where
    its returned outputs go afterwards."""

    text: str
    environments: tuple[Path, ...]  # the environment files its nodes run in
    returned: Mapping[str, str]  # pipeline output -> DVC path
    datastore: str
    data: tuple[DataUpload, ...]
    computes: tuple[Path, ...]  # generated computes/<name>.yml of the clusters its nodes use
    processes: Mapping[str, int]  # cluster -> the most processes a node starts on one machine
    experiment: str
    states: Mapping[str, NodeState]  # what each node's reuse depends on (`azureml.plan`)
    upstream: Mapping[str, tuple[str, ...]]

    def plan(self) -> list[str]:
        """What `submit` creates when it is missing, one line each (for `--dry-run`)."""
        lines = [f"would create compute {path.stem} if missing" for path in self.computes]
        return lines + [
            f"would upload {upload.local.name} ({upload.dvcfile}) and register data asset "
            f"{upload.asset.stem} if missing"
            for upload in self.data
        ]


def prepare(
    root: Path,
    out: str,
    env: Mapping[str, str],
    pipeline_name: str | None = None,
    params: Sequence[str] = (),
) -> Submission:
    """The committed pipeline job of the pipeline `pipeline_name` (`find_pipeline`) with
    names, display name and tags for this checkout.

    Refuses a pipeline that is out of date with dvc.yaml, so what runs is what DVC would run.
    With `params` (`[FILE:]KEY=VALUE`, as `dvc exp run -S`), sets them in the params files
    first and rewrites the compiled files to match: a dev build's full data becomes the data
    input of the nodes that read it, exactly as `dvc exp run -S` would repoint the stages.
    """
    settings = load_settings(root)
    compiled = compile_project(root, out, settings)
    if compiled.plan(root, out).changes(root):
        raise BranchflowError(
            f"{out} is out of date with dvc.yaml; run `branchflow azureml compile` and commit"
        )
    if params:
        set_params(root, params)
        compiled = compile_project(root, out, settings)
        compiled.plan(root, out).apply(root)
    validate(root, out, compiled.dag)
    chosen = find_pipeline(root, settings, pipeline_name)
    steps = pipeline_steps(compiled.dag, chosen)
    context = resolve_context(root, env, settings)
    names = names_for(context, settings, chosen.name)
    job_file = root / out / pipeline_file(chosen.name)
    pipeline = yaml.safe_load(job_file.read_text(encoding="utf-8"))
    for job in pipeline["jobs"].values():
        job["component"] = str((root / out / job["component"]).resolve())
    tags = {
        "branch": context.branch,
        "commit": context.commit,
        "data_hash": data_hash(compiled.dag, chosen),
        "run_type": context.run_type,
        "dirty": str(context.dirty).lower(),
        "pr": None if context.pr_number is None else str(context.pr_number),
        "build_id": context.build_id,
        "run_url": context.run_url,
    }
    default = pipeline["settings"]["default_compute"].removeprefix("azureml:")
    components = {  # each component's document, read once (a stage's shards share one)
        path: yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        for path in {job["component"] for job in pipeline["jobs"].values()}
    }
    states = node_states(root, steps, pipeline["jobs"], components, default)
    head = {key: pipeline.pop(key) for key in ("$schema", "type")}
    document = {
        **head,
        "experiment_name": names.experiment,
        "display_name": names.run_name,
        "tags": {key: value for key, value in tags.items() if value is not None}
        | plan_tags(states),
        **pipeline,
    }
    used = _used(root / out, pipeline["jobs"], components, default)
    returned = _returned(pipeline["jobs"], components)
    read = {item.producer_output for step in steps for item in step.inputs if not item.producer}
    prefix = settings.azureml.data_prefix
    data = tuple(
        DataUpload(
            asset=root / out / DATA / f"{data_asset_name(source, settings.base_name)}.yml",
            local=root / source.path,
            dvcfile=source.dvcfile,
            prefix=f"{prefix}/{source.md5}",
        )
        for source in compiled.dag.data
        if source.name in read
    )
    return Submission(
        text=yaml.safe_dump(document, sort_keys=False, width=1000),
        environments=used.environments,
        returned=returned,
        datastore=settings.azureml.datastore,
        data=data,
        computes=tuple(
            path
            for path in sorted((root / out / COMPUTES).glob("*.yml"))
            if path.stem in used.processes
        ),
        processes=used.processes,
        experiment=names.experiment,
        states=states,
        upstream=upstream_nodes(pipeline["jobs"]),
    )


def _returned(jobs: Mapping[str, Any], components: Mapping[str, Any]) -> dict[str, str]:
    """Pipeline output -> the DVC path it holds (the component output's description); the
    shards of one stage return one path each."""
    return {
        output: components[job["component"]]["outputs"][name]["description"]
        for job in jobs.values()
        for name, output in promoted(job).items()
    }


@dataclass(frozen=True)
class _Used:
    environments: tuple[Path, ...]
    processes: dict[str, int]  # cluster -> the most processes per machine of a node on it


def _used(
    folder: Path, jobs: Mapping[str, Any], components: Mapping[str, Any], default: str
) -> _Used:
    """The environments and clusters the pipeline's nodes run on: only these are created."""
    references = {}
    for name in (ENVIRONMENT_FILE, CPU_ENVIRONMENT_FILE):
        if (folder / name).is_file():
            spec = yaml.safe_load((folder / name).read_text(encoding="utf-8"))
            references[f"azureml:{spec['name']}:{spec['version']}"] = folder / name
    environments: set[Path] = set()
    processes: dict[str, int] = {}
    for job in jobs.values():
        environments.add(references[components[job["component"]]["environment"]])
        compute = job.get("compute", default).removeprefix("azureml:")
        count = job.get("distribution", {}).get("process_count_per_instance", 1)
        processes[compute] = max(processes.get(compute, 1), count)
    return _Used(tuple(sorted(environments)), processes)


def workspace(
    env: Mapping[str, str], purpose: str = "submit to, or use --dry-run"
) -> tuple[str, str, str]:
    """Subscription, resource group and workspace, or one error naming what is missing."""
    missing = [name for name in WORKSPACE_VARIABLES if not env.get(name)]
    if missing:
        raise BranchflowError(
            f"{', '.join(missing)} not set: set them to the Azure ML workspace to {purpose}"
        )
    subscription, group, name = (env[variable] for variable in WORKSPACE_VARIABLES)
    return subscription, group, name


def submit(
    root: Path,
    submission: Submission,
    workspace_ids: tuple[str, str, str],
    *,
    wait: bool,
    timeout: float,
    log: Callable[[str], None],
) -> None:
    """Create what is missing (computes, data assets, the environment), submit the job; with
    `wait`, follow it, check its reuse against the plan and fetch its results."""
    from azure.ai.ml import load_job

    client, credential = _client(workspace_ids)
    with _azure_errors():
        verdicts = plan(submission.states, submission.upstream, last_states(client, submission))
        for verdict in verdicts:
            log(verdict.line())
        computes = check_computes(client, submission)  # before a long upload
        _create_data(root, client, credential, submission, log)  # checks local data first
        create_computes(client, computes, log)
        register_environments(client, submission, log)
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "pipeline.yml"
            path.write_text(submission.text, encoding="utf-8")
            job = client.jobs.create_or_update(load_job(source=path))
        log(f"submitted {job.name}: {job.studio_url}")
        if wait:
            _wait(client, job.name, timeout, job.studio_url, log)
            check_reuse(client, job.name, verdicts, log)
            _download(client, job.name, submission.returned, root, log)


def register_environments(client: Any, submission: Submission, log: Callable[[str], None]) -> None:
    """Register each environment the pipeline's nodes use whose content version is new."""
    from azure.ai.ml import load_environment

    for path in submission.environments:
        environment = load_environment(source=path)
        if not _exists(client.environments.get, environment.name, version=environment.version):
            log(f"registering environment {environment.name}:{environment.version}")
            client.environments.create_or_update(environment)


def plan_submission(
    submission: Submission, workspace_ids: tuple[str, str, str], client: Any = None
) -> list[Verdict]:
    """What Azure ML would reuse and rerun of `submission` now, against the workspace."""
    client = client or _client(workspace_ids)[0]
    with _azure_errors():
        return plan(submission.states, submission.upstream, last_states(client, submission))


def _client(workspace_ids: tuple[str, str, str]) -> tuple[Any, Any]:
    """An `MLClient` of the workspace with `DefaultAzureCredential`, and the credential."""
    try:
        from azure.ai.ml import MLClient
        from azure.identity import DefaultAzureCredential
    except ImportError as exc:
        raise BranchflowError(
            f"talking to Azure ML needs its SDK ({exc.name} is missing); "
            'pip install "branchflow[azure]"'
        ) from exc
    credential = DefaultAzureCredential()
    return MLClient(credential, *workspace_ids), credential


@contextmanager
def _azure_errors() -> Iterator[None]:
    """An error of the Azure SDK (MlException included) as one line."""
    from azure.core.exceptions import AzureError

    try:
        yield
    except AzureError as exc:
        raise BranchflowError(f"Azure ML: {first_line(exc)}") from exc


def _exists(get: Callable[..., Any], *args: Any, **kwargs: Any) -> bool:
    return _get(get, *args, **kwargs) is not None


def _get(get: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """What `get` returns, or None when the service has no such resource."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        return get(*args, **kwargs)
    except ResourceNotFoundError:
        return None


def last_states(client: Any, submission: Submission) -> dict[str, NodeState] | None:
    """The node states recorded by the newest completed job of the submission's experiment,
    or None when it has none (`submit` records them as tags; see `branchflow.azureml.plan`)."""
    jobs = [
        job
        for job in client.jobs.list(tag=PLAN_TAG)
        if job.experiment_name == submission.experiment and _text(job.status) == "Completed"
    ]
    if not jobs:
        return None
    newest = max(jobs, key=lambda job: job.creation_context.created_at)
    return recorded(newest.tags or {})


def check_reuse(
    client: Any, name: str, verdicts: Sequence[Verdict], log: Callable[[str], None]
) -> None:
    """Compare what Azure ML reused in job `name` with the plan; refuse any difference (a node
    reused that should have rerun would carry a stale output)."""
    flag, true = REUSED
    reused = {
        str(child.display_name or child.name): (child.properties or {}).get(flag) == true
        for child in client.jobs.list(parent_job_name=name)
    }
    wrong = [
        f"{verdict.node} was {'reused' if reused[verdict.node] else 'rerun'}, planned "
        f"{'rerun' if verdict.rerun else 'reused'}"
        for verdict in verdicts
        if verdict.node in reused and reused[verdict.node] == verdict.rerun
    ]
    if wrong:
        raise BranchflowError(
            f"Azure ML job {name} did not reuse as planned: {'; '.join(wrong)}; compare the "
            "nodes' snapshots, environments and settings in the studio"
        )
    log(f"{name}: Azure ML reused and reran the nodes as planned")


def check_computes(client: Any, submission: Submission) -> list[Any]:
    """The clusters the pipeline uses (`AmlCompute`), each checked against the sizes the
    workspace's region offers and the GPUs its nodes' processes need; nothing is created."""
    from azure.ai.ml import load_compute
    from azure.ai.ml.entities import AmlCompute

    wanted: list[AmlCompute] = []
    for path in submission.computes:
        compute = load_compute(source=path)
        assert isinstance(compute, AmlCompute), "compile writes AmlCompute clusters only"
        wanted.append(compute)
    if not wanted:
        return wanted
    offered = {str(size.name).lower(): size for size in client.compute.list_sizes()}
    for compute in wanted:
        size = offered.get(str(compute.size).lower())
        if size is None:
            gpus = sorted(s.name for s in offered.values() if s.gpus)
            raise BranchflowError(
                f"compute {compute.name}: the workspace's region offers no {compute.size} for "
                f"Azure ML clusters (GPU sizes there: {', '.join(gpus) or 'none'}); set "
                f"[tool.branchflow.azureml.computes.{compute.name}] size to one it offers"
            )
        processes = submission.processes.get(str(compute.name), 1)
        if processes > 1 and processes > (size.gpus or 0):
            raise BranchflowError(
                f"compute {compute.name}: a node starts {processes} processes per machine, but "
                f"{compute.size} has {size.gpus or 0} GPU(s); lower "
                "process_count_per_instance, or choose a size with more GPUs"
            )
    return wanted


def create_computes(client: Any, wanted: Sequence[Any], log: Callable[[str], None]) -> None:
    """Create the checked clusters that do not exist; bring an existing one's scale settings
    to what its file says, and refuse one of another size or tier (Azure changes neither)."""
    for compute in wanted:
        existing = _get(client.compute.get, compute.name)
        if existing is None:
            log(
                f"creating compute {compute.name} ({compute.size}, {compute.min_instances}-"
                f"{compute.max_instances} nodes)"
            )
            client.compute.begin_create_or_update(compute).result()
            continue
        _reconcile(client, compute, existing, log)


def _reconcile(client: Any, wanted: Any, existing: Any, log: Callable[[str], None]) -> None:
    """An existing cluster keeps its size and tier (Azure cannot change them) and takes the
    file's scale settings."""
    key = f"[tool.branchflow.azureml.computes.{wanted.name}]"
    for field in ("size", "tier"):
        have, want = getattr(existing, field), getattr(wanted, field)
        if have is not None and str(have).lower() != str(want).lower():
            raise BranchflowError(
                f"compute {wanted.name} exists with {field} {have}, but {key} says {want}, and "
                f"Azure cannot change a cluster's {field}: delete it (`az ml compute delete "
                f"--name {wanted.name}`) and submit again, or set {field} = {have!r}"
            )
    scale = ("min_instances", "max_instances", "idle_time_before_scale_down")
    changed = [
        f"{name} {getattr(existing, name)} -> {getattr(wanted, name)}"
        for name in scale
        if getattr(existing, name) != getattr(wanted, name)
    ]
    if not changed:
        log(f"compute {wanted.name} exists as configured")
        return
    log(f"updating compute {wanted.name}: {', '.join(changed)}")
    client.compute.begin_update(wanted).result()


def _create_data(
    root: Path, client: Any, credential: Any, submission: Submission, log: Callable[[str], None]
) -> None:
    """Register each DVC data source as a data asset, uploading it first, when it is missing."""
    from azure.ai.ml import load_data

    container = None
    for upload in submission.data:
        asset = load_data(source=upload.asset)
        if _exists(client.data.get, asset.name, version=asset.version):
            log(f"data asset {asset.name}:{asset.version} exists; nothing uploaded")
            continue
        files = workspace_files(root, upload)
        container = container or _container(client, credential, submission.datastore)
        upload_source(container, upload.local, upload.prefix, log, files)
        log(f"registering data asset {asset.name}:{asset.version}")
        client.data.create_or_update(asset)


def workspace_files(root: Path, upload: DataUpload) -> list[Path]:
    """The files of a data source that its DVC md5 covers (`.dvcignore`d ones left out, as DVC
    leaves them out); refused when the workspace differs from what the `.dvc` file records."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        changed = repo.status(targets=[str(root / upload.dvcfile)])
        if changed:
            raise BranchflowError(
                f"{upload.local.relative_to(root)} differs from {upload.dvcfile}; run "
                f"`dvc checkout {upload.dvcfile}` (or `dvc pull {upload.dvcfile}`) before "
                "submitting"
            )
        if upload.local.is_file():
            return [upload.local]
        return sorted(Path(p) for p in repo.dvcignore.find(repo.fs, str(upload.local)))


def _container(client: Any, credential: Any, datastore: str) -> Any:
    """The blob container behind an Azure ML datastore, with this session's credential."""
    from azure.storage.blob import ContainerClient

    store = client.datastores.get(datastore)
    url = f"{store.protocol}://{store.account_name}.blob.{store.endpoint}"
    return ContainerClient(url, store.container_name, credential=credential)


def _wait(client: Any, name: str, timeout: float, url: str, log: Callable[[str], None]) -> None:
    """Print each status change of the job and its steps until it ends, is stuck or `timeout`
    passes. The job is cancelled on a timeout, Ctrl-C or a failed poll; when the credentials
    expire (an OIDC login lasts about an hour) it is left running and its URL printed."""
    from azure.core.exceptions import AzureError, ClientAuthenticationError

    started = time.monotonic()
    seen: dict[str, str] = {}
    try:
        while True:
            status = _poll(client, name, seen, log)
            if status == "Completed":
                return
            if status in FAILED:
                raise BranchflowError(f"Azure ML job {name} ended {status}; see {url}")
            if status in STUCK:
                raise BranchflowError(
                    f"Azure ML job {name} is {status} and will not finish by itself; see {url}"
                )
            if time.monotonic() - started >= timeout:
                _cancel(client, name, log)
                raise BranchflowError(
                    f"Azure ML job {name} still {status} after {timeout:g} s; cancelled it; "
                    f"see {url}"
                )
            time.sleep(POLL_SECONDS)
    except ClientAuthenticationError:
        raise BranchflowError(
            f"the Azure credentials expired after {time.monotonic() - started:.0f} s of "
            f"waiting; job {name} is still running: follow it at {url}"
        ) from None
    except KeyboardInterrupt:
        _cancel(client, name, log)
        raise BranchflowError(f"interrupted: cancelled Azure ML job {name}; see {url}") from None
    except AzureError as exc:
        _cancel(client, name, log)
        raise BranchflowError(
            f"following Azure ML job {name} failed ({first_line(exc)}); cancelled it; see {url}"
        ) from None


def _poll(client: Any, name: str, seen: dict[str, str], log: Callable[[str], None]) -> str:
    """The job's status, after printing each change of it and of its steps."""
    status = _text(client.jobs.get(name).status)
    steps = {
        f"{name}/{child.display_name or child.name}": _text(child.status)
        for child in client.jobs.list(parent_job_name=name)
    }
    for key, value in {name: status, **steps}.items():
        if seen.get(key) != value:
            log(f"{key}: {value}")
            seen[key] = value
    return status


def _text(status: Any) -> str:
    """A job status as the service spells it (the SDK gives enum members or strings)."""
    return str(getattr(status, "value", status))


def _cancel(client: Any, name: str, log: Callable[[str], None]) -> None:
    """Ask Azure ML to cancel the job; a failure to do so is printed, not raised."""
    from azure.core.exceptions import AzureError

    try:
        client.jobs.begin_cancel(name)
    except AzureError as exc:
        log(f"could not cancel {name} ({first_line(exc)}); cancel it in the studio")
    else:
        log(f"cancelling {name}")


def _download(
    client: Any, name: str, returned: Mapping[str, str], root: Path, log: Callable[[str], None]
) -> None:
    """Put each returned output where `dvc repro` would have written it: model, metrics, plots
    for `branchflow register` and `branchflow report`; the shards of one output merged."""
    written: set[str] = set()
    for output, path in returned.items():
        with tempfile.TemporaryDirectory() as folder:
            client.jobs.download(name, output_name=output, download_path=folder)
            found = next(Path(folder).rglob(Path(path).name), None)
            if found is None:
                raise BranchflowError(f"Azure ML job {name}: output {output} has no {path}")
            target = root / path
            target.parent.mkdir(parents=True, exist_ok=True)
            if found.is_dir():
                if path not in written:
                    shutil.rmtree(target, ignore_errors=True)
                shutil.copytree(found, target, dirs_exist_ok=True)
            else:
                shutil.copyfile(found, target)
        written.add(path)
        log(f"downloaded {path} ({output})")
