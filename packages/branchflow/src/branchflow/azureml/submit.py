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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from branchflow.azureml.compile import (
    COMPUTES,
    DATA,
    ENVIRONMENT_FILE,
    compile_project,
    data_asset_name,
    pipeline_file,
)
from branchflow.azureml.upload import upload_source
from branchflow.azureml.validate import validate
from branchflow.errors import BranchflowError
from branchflow.settings import load_settings
from branchflow.workspace.context import resolve_context
from branchflow.workspace.naming import names_for
from branchflow.workspace.pipelines import data_hash, find_pipeline, pipeline_steps

WORKSPACE_VARIABLES = ("AZURE_SUBSCRIPTION_ID", "AZURE_RESOURCE_GROUP", "AZUREML_WORKSPACE")
FAILED = frozenset({"Failed", "Canceled", "NotResponding"})
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
    environment: Path
    returned: Mapping[str, str]  # pipeline output -> DVC path
    datastore: str
    data: tuple[DataUpload, ...]
    computes: tuple[Path, ...]  # generated computes/<name>.yml

    def plan(self) -> list[str]:
        """What `submit` creates when it is missing, one line each (for `--dry-run`)."""
        lines = [f"would create compute {path.stem} if missing" for path in self.computes]
        return lines + [
            f"would upload {upload.local.name} ({upload.dvcfile}) and register data asset "
            f"{upload.asset.stem} if missing"
            for upload in self.data
        ]


def prepare(
    root: Path, out: str, env: Mapping[str, str], pipeline_name: str | None = None
) -> Submission:
    """The committed pipeline job of the pipeline `pipeline_name` (`find_pipeline`) with
    names, display name and tags for this checkout.

    Refuses a pipeline that is out of date with dvc.yaml, so what runs is what DVC would run.
    """
    settings = load_settings(root)
    compiled = compile_project(root, out, settings)
    if compiled.plan(root, out).changes(root):
        raise BranchflowError(
            f"{out} is out of date with dvc.yaml; run `branchflow azureml compile` and commit"
        )
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
    head = {key: pipeline.pop(key) for key in ("$schema", "type")}
    document = {
        **head,
        "experiment_name": names.experiment,
        "display_name": names.run_name,
        "tags": {key: value for key, value in tags.items() if value is not None},
        **pipeline,
    }
    returned = {o.name: o.path for step in steps for o in step.outputs if o.returned}
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
        environment=root / out / ENVIRONMENT_FILE,
        returned=returned,
        datastore=settings.azureml.datastore,
        data=data,
        computes=tuple(sorted((root / out / COMPUTES).glob("*.yml"))),
    )


def workspace(env: Mapping[str, str]) -> tuple[str, str, str]:
    """Subscription, resource group and workspace, or one error naming what is missing."""
    missing = [name for name in WORKSPACE_VARIABLES if not env.get(name)]
    if missing:
        raise BranchflowError(
            f"{', '.join(missing)} not set: set them to the Azure ML workspace to submit to, "
            "or use --dry-run"
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
    `wait`, follow it and fetch its results."""
    try:
        from azure.ai.ml import MLClient, load_environment, load_job
        from azure.core.exceptions import AzureError
        from azure.identity import DefaultAzureCredential
    except ImportError as exc:
        raise BranchflowError(
            f"submitting needs the Azure ML SDK ({exc.name} is missing); "
            'pip install "branchflow[azure]"'
        ) from exc
    credential = DefaultAzureCredential()
    client = MLClient(credential, *workspace_ids)
    try:
        _create_computes(client, submission.computes, log)
        _create_data(root, client, credential, submission, log)
        environment = load_environment(source=submission.environment)
        if not _exists(client.environments.get, environment.name, version=environment.version):
            log(f"registering environment {environment.name}:{environment.version}")
            client.environments.create_or_update(environment)
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "pipeline.yml"
            path.write_text(submission.text, encoding="utf-8")
            job = client.jobs.create_or_update(load_job(source=path))
        log(f"submitted {job.name}: {job.studio_url}")
        if wait:
            _wait(client, job.name, timeout, job.studio_url, log)
            _download(client, job.name, submission.returned, root, log)
    except AzureError as exc:  # MlException included
        message = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BranchflowError(f"Azure ML: {message}") from exc


def _exists(get: Callable[..., Any], *args: Any, **kwargs: Any) -> bool:
    from azure.core.exceptions import ResourceNotFoundError

    try:
        get(*args, **kwargs)
    except ResourceNotFoundError:
        return False
    return True


def _create_computes(client: Any, files: tuple[Path, ...], log: Callable[[str], None]) -> None:
    """Create each configured cluster that does not exist; an existing one is used as it is."""
    from azure.ai.ml import load_compute
    from azure.ai.ml.entities import AmlCompute

    for path in files:
        compute = load_compute(source=path)
        assert isinstance(compute, AmlCompute), f"{path}: compile writes AmlCompute clusters"
        if _exists(client.compute.get, compute.name):
            log(f"compute {compute.name} exists; used as it is")
            continue
        log(
            f"creating compute {compute.name} ({compute.size}, {compute.min_instances}-"
            f"{compute.max_instances} nodes)"
        )
        client.compute.begin_create_or_update(compute).result()


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
        _check_workspace_data(root, upload)
        container = container or _container(client, credential, submission.datastore)
        upload_source(container, upload.local, upload.prefix, log)
        log(f"registering data asset {asset.name}:{asset.version}")
        client.data.create_or_update(asset)


def _check_workspace_data(root: Path, upload: DataUpload) -> None:
    """Refuse to upload workspace data that differs from what its `.dvc` file records."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        changed = repo.status(targets=[str(root / upload.dvcfile)])
    if changed:
        raise BranchflowError(
            f"{upload.local.relative_to(root)} differs from {upload.dvcfile}; run "
            f"`dvc checkout {upload.dvcfile}` (or `dvc pull {upload.dvcfile}`) before submitting"
        )


def _container(client: Any, credential: Any, datastore: str) -> Any:
    """The blob container behind an Azure ML datastore, with this session's credential."""
    from azure.storage.blob import ContainerClient

    store = client.datastores.get(datastore)
    url = f"{store.protocol}://{store.account_name}.blob.{store.endpoint}"
    return ContainerClient(url, store.container_name, credential=credential)


def _wait(client: Any, name: str, timeout: float, url: str, log: Callable[[str], None]) -> None:
    """Print each status change of the job and its steps until it ends or `timeout` passes."""
    deadline = time.monotonic() + timeout
    seen: dict[str, str] = {}
    while True:
        status = client.jobs.get(name).status
        steps = {
            f"{name}/{child.display_name or child.name}": child.status
            for child in client.jobs.list(parent_job_name=name)
        }
        for key, value in {name: status, **steps}.items():
            if seen.get(key) != value:
                log(f"{key}: {value}")
                seen[key] = value
        if status == "Completed":
            return
        if status in FAILED:
            raise BranchflowError(f"Azure ML job {name} ended {status}; see {url}")
        if time.monotonic() >= deadline:
            client.jobs.begin_cancel(name)
            raise BranchflowError(
                f"Azure ML job {name} still {status} after {timeout:g} s; cancelled it; see {url}"
            )
        time.sleep(POLL_SECONDS)


def _download(
    client: Any, name: str, returned: Mapping[str, str], root: Path, log: Callable[[str], None]
) -> None:
    """Put each returned output where `dvc repro` would have written it: model, metrics, plots
    for `branchflow register` and `branchflow report`."""
    for output, path in returned.items():
        with tempfile.TemporaryDirectory() as folder:
            client.jobs.download(name, output_name=output, download_path=folder)
            found = next(Path(folder).rglob(Path(path).name), None)
            if found is None:
                raise BranchflowError(f"Azure ML job {name}: output {output} has no {path}")
            target = root / path
            target.parent.mkdir(parents=True, exist_ok=True)
            if found.is_dir():
                shutil.rmtree(target, ignore_errors=True)
                shutil.copytree(found, target)
            else:
                shutil.copyfile(found, target)
        log(f"downloaded {path}")
