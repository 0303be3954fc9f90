"""The model package `register` logs: its flavor's `log_model` arguments from
`[tool.branchflow.model]`, checked up front, and the sha256s that identify it."""

from __future__ import annotations

import hashlib
import importlib
import json
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from branchflow.errors import BranchflowError, docs_url
from branchflow.settings import MODEL_SECTION, SAVED_MODEL, ModelSettings, Settings
from branchflow.tracking import file_sha256
from branchflow.workspace.lock import environment_requirements, has_lock

FLAVOR_PACKAGES = {"sklearn": ("sklearn", "scikit-learn"), "pytorch": ("torch", "torch")}


def artifacts_sha256(root: Path, artifacts: Mapping[str, str]) -> str:
    """sha256 of the model's files: of the file itself when there is one, else of a manifest."""
    digests = _digests(root, artifacts)
    if len(digests) == 1:
        return digests[0][2]
    return hashlib.sha256(json.dumps(digests).encode()).hexdigest()


DOWNLOAD_NOTE = "registered_model_meta"  # what a `models:/` download adds: name and version


def tree_sha256(folder: Path) -> str:
    """sha256 of a downloaded model package, every file of it: of the lines `<sha256>  <path>`
    that `find . -type f | sort | xargs sha256sum` prints in `folder` (paths relative, sorted,
    without the `./`), leaving out the `DOWNLOAD_NOTE` that the download itself wrote."""
    files = sorted(
        (file.relative_to(folder).as_posix(), file)
        for file in folder.rglob("*")
        if file.is_file() and file.relative_to(folder).as_posix() != DOWNLOAD_NOTE
    )
    lines = "".join(f"{file_sha256(file)}  {name}\n" for name, file in files)
    return hashlib.sha256(lines.encode()).hexdigest()


def served_sha256(package: Path) -> str | None:
    """The sha256 of a downloaded pyfunc package's one artifact file, which `register` tags as
    `model_sha256` (see `artifacts_sha256`); None unless the package has exactly one."""
    from mlflow.models import Model

    flavor = Model.load(str(package)).flavors.get("python_function", {})
    artifacts = {key: entry["path"] for key, entry in flavor.get("artifacts", {}).items()}
    digests = _digests(package, artifacts)
    return digests[0][2] if len(digests) == 1 else None


def package_sha256(root: Path, model: ModelSettings, requirements: list[str] | None) -> str:
    """The registration key: sha256 of everything the logged package holds, that is the flavor,
    the bytes of the artifacts, python_model, code_paths and input example, the signature and
    the pip requirements (None: MLflow infers them, and they are not in the key)."""
    named: dict[str, str | None] = {f"artifacts.{k}": p for k, p in model.artifacts.items()}
    named |= {f"code_paths.{index}": path for index, path in enumerate(model.code_paths)}
    named |= {"python_model": model.python_model, "input_example": model.input_example}
    contents = {
        "flavor": model.flavor,
        "files": _digests(root, {key: path for key, path in named.items() if path}),
        "signature": model.signature,
        "pip_requirements": requirements,
    }
    return hashlib.sha256(json.dumps(contents, sort_keys=True).encode()).hexdigest()


def _digests(root: Path, named: Mapping[str, str]) -> list[list[str]]:
    """`[name, path, sha256]` of each file of `named` (a folder: every file under it, without
    `__pycache__`, whose bytes change with every checkout), sorted."""
    files = sorted(
        (key, file)
        for key, path in named.items()
        for file in ([root / path] if (root / path).is_file() else (root / path).rglob("*"))
        if file.is_file() and "__pycache__" not in file.relative_to(root).parts
    )
    return [[key, file.relative_to(root).as_posix(), file_sha256(file)] for key, file in files]


def model_settings(settings: Settings) -> ModelSettings:
    if settings.model is None or not settings.model.artifacts:
        raise BranchflowError(
            f"pyproject.toml: {MODEL_SECTION} with artifacts (and python_model, or a flavor) is "
            f"needed to register a model; add it (see {docs_url('registry.md')})"
        )
    return settings.model


def log_model_arguments(root: Path, model: ModelSettings) -> dict[str, Any]:
    """Arguments for the flavor's `log_model`, checked up front."""
    common = {
        "code_paths": [str(root / path) for path in model.code_paths] or None,
        "input_example": _input_example(root, model.input_example),
        "signature": _signature(model.signature),
        "pip_requirements": _requirements(root, model),
    }
    if model.flavor == "sklearn":
        # cloudpickle: the estimator is a pickle already; MLflow's default, skops, is a package
        # the toolkit does not bring
        return {
            **common,
            "sk_model": _saved_model(root, model),
            "serialization_format": "cloudpickle",
        }
    if model.flavor == "pytorch":
        # pickle: what torch.save wrote, for TorchScript too (pt2 needs torch.export to succeed)
        return {
            **common,
            "pytorch_model": _saved_model(root, model),
            "serialization_format": "pickle",
        }
    return {
        **common,
        "python_model": str(root / (model.python_model or "")),
        "artifacts": {key: str(root / path) for key, path in model.artifacts.items()},
    }


def _saved_model(root: Path, model: ModelSettings) -> Any:
    """The sklearn or pytorch flavor's model, loaded from its one artifact. Loading a pickle
    runs its code: only the file the project's own settings name is loaded."""
    module, package = FLAVOR_PACKAGES[model.flavor]
    try:
        importlib.import_module(module)
    except ImportError:
        raise BranchflowError(
            f"{MODEL_SECTION} flavor {model.flavor} needs the {package} package; add it to the "
            "project's dependencies"
        ) from None
    (path,) = model.artifacts.values()
    try:
        return _load_estimator(root / path) if module == "sklearn" else _load_torch(root / path)
    except Exception as exc:  # unpickling raises whatever the pickled code raises
        raise BranchflowError(
            f"{MODEL_SECTION} artifacts {path}: not {SAVED_MODEL[model.flavor]} ({exc})"
        ) from None


def _load_estimator(file: Path) -> Any:
    """A pickled or joblib-dumped estimator (joblib reads both)."""
    import joblib

    return joblib.load(file)


def _load_torch(file: Path) -> Any:
    """A TorchScript file (its archive holds `constants.pkl`), else a whole `torch.save`d model."""
    import torch

    with zipfile.ZipFile(file) as archive:
        scripted = any(name.endswith("/constants.pkl") for name in archive.namelist())
    if scripted:
        return torch.jit.load(file, map_location="cpu")  # type: ignore[no-untyped-call]
    return torch.load(file, map_location="cpu", weights_only=False)


def _requirements(root: Path, model: ModelSettings) -> list[str] | None:
    """The configured list, else the lock's pins; None (MLflow infers them) without either."""
    if model.pip_requirements is None and not has_lock(root):
        return None
    return [*environment_requirements(root, model.pip_requirements, model.lock_groups)]


def _input_example(root: Path, path: str | None) -> Any:
    if path is None:
        return None
    file = root / path
    try:
        if file.suffix == ".npy":
            import numpy as np

            return np.load(file)
        if file.suffix == ".json":
            return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BranchflowError(f"{MODEL_SECTION} input_example {path}: unreadable ({exc})") from None
    raise BranchflowError(f"{MODEL_SECTION} input_example {path}: use a .npy or .json file")


def _signature(spec: Mapping[str, Any] | None) -> Any:
    if spec is None:
        return None
    from mlflow.exceptions import MlflowException
    from mlflow.models import ModelSignature

    try:
        return ModelSignature.from_dict({key: json.dumps(value) for key, value in spec.items()})
    except (MlflowException, KeyError, TypeError, ValueError) as exc:
        raise BranchflowError(
            f"{MODEL_SECTION} signature: {exc}; write it as an MLmodel file's signature"
        ) from None
