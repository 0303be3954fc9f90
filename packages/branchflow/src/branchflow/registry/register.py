"""`branchflow register`: log a run of the workspace's DVC state and register its model as
the branch's candidate.

Concurrent registers of one package: the version with the lowest number among those tagged
with the package's sha256 (`package_sha256`: everything the logged model holds) wins. A
`register` that finds its new version beaten by a lower one deletes its version and its run
and reports the winner, so N concurrent registers of the same package leave one.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from branchflow.errors import BranchflowError
from branchflow.registry.package import (
    artifacts_sha256,
    log_model_arguments,
    model_settings,
    package_sha256,
)
from branchflow.settings import MODEL_SECTION, load_settings
from branchflow.tracking import (
    RUN_LEASE_S,
    connect,
    end_orphans,
    ensure_experiment,
    lease_tags,
    log_file,
    log_snapshot,
    mlflow_errors,
    read_snapshot,
    run_tags,
    store_for,
)
from branchflow.workspace.context import resolve_context
from branchflow.workspace.dag import read_dag
from branchflow.workspace.naming import names_for
from branchflow.workspace.pipelines import scope

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

CANDIDATE = "candidate"
MODEL_SHA_TAG = "model_sha256"  # the artifacts' bytes, for people
PACKAGE_SHA_TAG = "package_sha256"  # the registration key: see `package_sha256`
MODEL_ARTIFACT = "model"


@dataclass(frozen=True)
class Registration:
    """The branch model version that holds the workspace's model package."""

    model: str
    version: str
    created: bool  # False: an earlier version already held this package
    run_id: str | None
    model_sha256: str
    package_sha256: str


def register(root: Path, env: Mapping[str, str] = os.environ) -> Registration:
    """Log a run of the workspace's DVC state and register its model as the branch candidate.

    Every precondition (settings, files, metrics, a reachable server) is checked before
    anything is written; the same model package on the same branch registers nothing new.
    """
    import mlflow

    settings = load_settings(root)
    model = model_settings(settings)
    context = resolve_context(root, env, settings)
    names = names_for(context, settings)
    judged = scope(root, settings, read_dag(root), None)
    units = judged.gate.units.file if judged.gate.units else None
    files = [*model.artifacts.values(), *model.source_files, *([units] if units else [])]
    snapshot = read_snapshot(root, judged.data_hash, files, judged.metrics_files)
    unknown = [key for key in model.key_metrics if key not in snapshot.metrics]
    if unknown:
        raise BranchflowError(
            f"{MODEL_SECTION} key_metrics {', '.join(unknown)}: not among the DVC metrics "
            f"({', '.join(sorted(snapshot.metrics)) or 'none'}); fix the names"
        )
    package = log_model_arguments(root, model)
    sha = artifacts_sha256(root, model.artifacts)
    key = package_sha256(root, model, package["pip_requirements"])
    store = store_for(root, env)
    client = connect(store)
    squatted = (
        f"the experiment {names.experiment} or the model {names.model} may exist under another "
        "account (any account may create a name first, and MLflow records no creator): an MLflow "
        "admin can see its permissions and delete it, or grant these credentials edit on it"
    )
    with mlflow_errors(store, squatted):
        experiment = ensure_experiment(
            client, names.experiment, context.branch, settings.base_name, store
        )
        end_orphans(client, experiment)
        held = first_holder(client, names.model, key)
        if held:
            client.set_registered_model_alias(names.model, CANDIDATE, held.version)
            return Registration(names.model, held.version, False, held.run_id, sha, key)
        tags = run_tags(context, snapshot)
        with mlflow.start_run(
            experiment_id=experiment,
            run_name=names.run_name,
            tags={**tags, **lease_tags(RUN_LEASE_S)},
        ) as run:
            flavor = importlib.import_module(f"mlflow.{model.flavor}")
            info = flavor.log_model(name=MODEL_ARTIFACT, **package)
            log_snapshot(root, snapshot, info.model_id)  # after the model: metrics link to it
            if units:  # what the gate's paired intervals against this model read
                log_file(root, units)
        key_metrics = {f"metric.{key}": str(snapshot.metrics[key]) for key in model.key_metrics}
        tags = {**tags, MODEL_SHA_TAG: sha, PACKAGE_SHA_TAG: key, **key_metrics}
        version = mlflow.register_model(info.model_uri, names.model, tags=tags)
        winner = first_holder(client, names.model, key) or version
        if winner.version != version.version:  # a concurrent register of this package came first
            client.delete_model_version(names.model, version.version)
            client.delete_run(run.info.run_id)
            client.delete_logged_model(info.model_id)
        client.set_registered_model_alias(names.model, CANDIDATE, winner.version)
    created = winner.version == version.version
    return Registration(names.model, winner.version, created, winner.run_id, sha, key)


def first_holder(client: MlflowClient, model: str, key: str) -> ModelVersion | None:
    """The lowest-numbered version of `model` that holds the package `key` (`package_sha256`)."""
    held = client.search_model_versions(f"name = '{model}' and tags.{PACKAGE_SHA_TAG} = '{key}'")
    return min(held, key=lambda version: int(version.version), default=None)
