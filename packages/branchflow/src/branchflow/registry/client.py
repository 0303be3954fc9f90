"""The registry's client for a project: settings, context, store and client opened together,
and the lookups every registry command shares."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from branchflow.settings import Settings, load_settings
from branchflow.tracking import Store, connect, read_store, store_for
from branchflow.workspace.context import Context, resolve_context

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion, RegisteredModel


def open_registry(
    root: Path, env: Mapping[str, str], read_only: bool = False
) -> tuple[Settings, Context, Store, MlflowClient]:
    """The project's settings, context, store and client; `read_only` commands never create a
    local store (see `read_store`)."""
    settings = load_settings(root)
    context = resolve_context(root, env, settings)
    store = read_store(root, env) if read_only else store_for(root, env)
    return settings, context, store, connect(store)


def registered_model(client: MlflowClient, name: str) -> RegisteredModel | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def version_uri(version: ModelVersion) -> str:
    return f"models:/{version.name}/{version.version}"
