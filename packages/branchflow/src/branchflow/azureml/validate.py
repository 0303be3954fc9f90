"""Offline validation of the compiled YAML: the Azure ML SDK's own checks, then ours.

`load_job`/`load_component` plus `_validate()` check the schema, the data-binding names inside
each `command` and that required inputs are bound. They do not check the bindings between
nodes (a missing node or output, a cycle), literal types, or inputs the component does not
declare (the SDK drops those silently); the service would only reject them at submission.
`check_pipeline` does, on the plain YAML.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from branchflow.azureml.compile import (
    BINDING,
    COMPONENTS,
    COMPUTES,
    CPU_ENVIRONMENT_FILE,
    DATA,
    ENVIRONMENT_FILE,
    pipeline_file,
)
from branchflow.azureml.snapshot import write_snapshots
from branchflow.errors import BranchflowError
from branchflow.workspace.dag import Dag

LITERALS = {"string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,)}


def validate(root: Path, out: str, dag: Dag) -> None:
    """Write the code snapshots of `dag`'s steps, then load every file under `root/out` with
    the SDK, offline; raise listing all problems."""
    write_snapshots(root, out, dag)
    folder = root / out
    problems = _sdk_problems(folder)
    components = {
        f"./{COMPONENTS}/{path.name}": _yaml(path)
        for path in sorted((folder / COMPONENTS).glob("*.yml"))
    }
    for path in sorted(folder.glob(pipeline_file("*"))):
        problems += [f"{path.name}: {p}" for p in check_pipeline(_yaml(path), components)]
    if problems:
        raise BranchflowError(f"{out} does not validate: {'; '.join(problems)}")


def check_pipeline(pipeline: dict[str, Any], components: dict[str, dict[str, Any]]) -> list[str]:
    """Problems in the wiring of a pipeline job whose components are given by `component:`."""
    problems: list[str] = []
    pipeline_inputs = pipeline.get("inputs") or {}
    pipeline_outputs = pipeline.get("outputs") or {}
    earlier: dict[str, dict[str, Any]] = {}  # node -> its component's outputs
    promoted: list[str] = []
    for node, job in (pipeline.get("jobs") or {}).items():
        where = f"jobs.{node}"
        component = components.get(job.get("component"))
        if component is None:
            problems.append(f"{where}.component: no component file {job.get('component')}")
            continue
        specs, given = component.get("inputs") or {}, job.get("inputs") or {}
        for name, value in given.items():
            spec = specs.get(name)
            if spec is None:
                problems.append(f"{where}.inputs.{name}: the component declares no such input")
            else:
                problems += _check_input(
                    f"{where}.inputs.{name}", spec, value, pipeline_inputs, earlier
                )
        problems += [
            f"{where}.inputs.{name}: required input not bound"
            for name, spec in specs.items()
            if name not in given and not spec.get("optional") and "default" not in spec
        ]
        outputs = component.get("outputs") or {}
        for name, value in (job.get("outputs") or {}).items():
            match = BINDING.fullmatch(str(value).strip())
            if name not in outputs:
                problems.append(f"{where}.outputs.{name}: the component declares no such output")
            elif not match or match[4] not in pipeline_outputs:
                problems.append(f"{where}.outputs.{name}: {value} is no pipeline output")
            else:
                promoted.append(match[4])
        earlier[node] = outputs
    problems += [
        f"outputs.{name}: bound by {promoted.count(name)} nodes instead of one"
        for name in pipeline_outputs
        if promoted.count(name) != 1
    ]
    return problems


def _check_input(
    where: str,
    spec: dict[str, Any],
    value: object,
    pipeline_inputs: dict[str, Any],
    earlier: dict[str, dict[str, Any]],
) -> list[str]:
    kind = spec.get("type")
    if isinstance(value, str) and "${{" in value:
        match = BINDING.fullmatch(value.strip())
        if not match or match[4]:
            return [f"{where}: {value} is not a binding to a pipeline input or node output"]
        if match[1]:
            source = pipeline_inputs.get(match[1])
            if source is None:
                return [f"{where}: no pipeline input {match[1]}"]
        else:
            if match[2] not in earlier:
                return [f"{where}: no node {match[2]} runs before this one"]
            source = earlier[match[2]].get(match[3])
            if source is None:
                return [f"{where}: node {match[2]} has no output {match[3]}"]
        source_kind = source.get("type") if isinstance(source, dict) else "a literal"
        return [] if source_kind == kind else [f"{where}: {kind} input bound to {source_kind}"]
    allowed = LITERALS.get(str(kind))
    if allowed is None:
        return [f"{where}: a {kind} input needs a binding, got {value!r}"]
    if not isinstance(value, allowed) or (isinstance(value, bool) and kind != "boolean"):
        return [f"{where}: {kind} input given {value!r}"]
    return []


def _sdk_problems(folder: Path) -> list[str]:
    """Load the environment, components and pipeline with azure-ai-ml and run `_validate()`."""
    try:
        from azure.ai.ml import load_component, load_compute, load_data, load_environment, load_job
    except ImportError as exc:
        raise BranchflowError(
            f"validating needs the Azure ML SDK ({exc.name} is missing); "
            'pip install "branchflow[azure]"'
        ) from exc
    problems: list[str] = []
    with _quiet_sdk():
        _load(problems, load_environment, folder / ENVIRONMENT_FILE)
        if (folder / CPU_ENVIRONMENT_FILE).is_file():
            _load(problems, load_environment, folder / CPU_ENVIRONMENT_FILE)
        for subfolder, loader in ((DATA, load_data), (COMPUTES, load_compute)):
            for path in sorted((folder / subfolder).glob("*.yml")):
                _load(problems, loader, path)
        for path in sorted((folder / COMPONENTS).glob("*.yml")):
            _load(problems, load_component, path)
        if not problems:  # a broken component breaks the SDK's own error report of the job
            for path in sorted(folder.glob(pipeline_file("*"))):
                _load(problems, load_job, path)
    return problems


def _load(problems: list[str], loader: Callable[..., Any], path: Path) -> None:
    from azure.ai.ml.exceptions import ValidationException
    from marshmallow import ValidationError

    try:
        entity = loader(source=path)
    except (ValidationError, ValidationException) as exc:
        problems.append(f"{path.name}: {_sdk_message(exc)}")
        return
    validate = getattr(entity, "_validate", None)
    if validate is not None:
        result = validate(raise_error=False)
        problems += [f"{path.name}: {key}: {text}" for key, text in result.error_messages.items()]


def _sdk_message(exc: Exception) -> str:
    """The path and message of each error in the SDK's JSON report, else its first line."""
    text = str(exc)
    try:
        report = json.loads(text[text.index("{") : text.rindex("}") + 1])
        return "; ".join(f"{error['path']}: {error['message']}" for error in report["errors"])
    except (ValueError, KeyError, TypeError):
        return text.strip().splitlines()[0]


@contextmanager
def _quiet_sdk() -> Iterator[None]:
    """Hide the SDK's marshmallow deprecation warnings and "experimental class" log lines."""
    logger = logging.getLogger("azure.ai.ml._utils._experimental")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _yaml(path: Path) -> dict[str, Any]:
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise BranchflowError(f"cannot read {path}: {exc}") from exc
    return document if isinstance(document, dict) else {}
