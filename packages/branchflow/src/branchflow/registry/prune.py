"""`branchflow prune`: remove a merged or abandoned branch's model versions and experiments,
keeping what production or an alias still needs."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from branchflow.errors import BranchflowError
from branchflow.registry.champion import copied_from
from branchflow.registry.client import open_registry, registered_model, version_uri
from branchflow.registry.register import CANDIDATE
from branchflow.tracking import branch_experiments, mlflow_errors
from branchflow.workspace.naming import names_on


@dataclass(frozen=True)
class PrunePlan:
    """What `prune` removed (or, for a dry run, would remove) for one branch."""

    branch: str
    model: str
    versions: tuple[str, ...]
    kept_versions: tuple[str, ...]
    experiments: tuple[str, ...]
    kept_experiments: tuple[str, ...]
    dry_run: bool


def prune(
    root: Path, branch: str, dry_run: bool = False, env: Mapping[str, str] = os.environ
) -> PrunePlan:
    """Delete `branch`'s model versions and soft-delete its experiments.

    Kept: versions an alias other than `candidate` points to, versions copied into the
    production model (a rollback may need them), and the experiments of their runs.
    """
    if not branch.strip():
        raise BranchflowError("--branch is empty; name the merged or deleted branch")
    settings, context, store, client = open_registry(root, env)
    names = names_on(context, settings, branch)
    with mlflow_errors(store):
        registered = registered_model(client, names.model)
        versions = client.search_model_versions(f"name = '{names.model}'") if registered else []
        aliases = registered.aliases if registered else {}
        production = client.search_model_versions(f"name = '{names.production_model}'")
        copied = {copied_from(version) for version in production}
        keep = {
            v.version
            for v in versions
            if version_uri(v) in copied
            or any(a != CANDIDATE and n == v.version for a, n in aliases.items())
        }
        runs = {v.run_id for v in versions if v.version in keep and v.run_id}
        busy = {client.get_run(run).info.experiment_id for run in runs}
        experiments = branch_experiments(client, branch, settings.base_name, [names.experiment])
        doomed = [e for e in experiments if e.experiment_id not in busy]
        plan = PrunePlan(
            branch=branch,
            model=names.model,
            versions=_sorted(v.version for v in versions if v.version not in keep),
            kept_versions=_sorted(keep),
            experiments=tuple(e.name for e in doomed),
            kept_experiments=tuple(e.name for e in experiments if e.experiment_id in busy),
            dry_run=dry_run,
        )
        if dry_run:
            return plan
        if registered and not keep:
            client.delete_registered_model(names.model)
        for version in plan.versions if keep else ():
            client.delete_model_version(names.model, version)
        for experiment in doomed:
            client.delete_experiment(experiment.experiment_id)
    return plan


def _sorted(versions: Any) -> tuple[str, ...]:
    return tuple(sorted(versions, key=int))
