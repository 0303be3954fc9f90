"""Project settings from the `[tool.branchflow]` table of `pyproject.toml`.

Every key is optional, so a project without the table works with the defaults. Unknown keys
are errors: a typo must not silently fall back to a default.
"""

from __future__ import annotations

import difflib
import math
import re
import stat
import string
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, cast

from branchflow import __version__
from branchflow.errors import BranchflowError
from branchflow.paired import Formula, parse_formula

PYPROJECT = "pyproject.toml"
PIPELINES_SECTION = "[tool.branchflow.pipelines]"
PIPELINE_NAME = re.compile(r"[a-z][a-z0-9-]{0,39}")
NAME_PLACEHOLDERS = frozenset({"pipeline_type", "base", "branch"})
DEFAULT_NAME_PATTERN = "{pipeline_type}_{base}_{branch}"
GATE_SECTION = "[tool.branchflow.gate]"
GATES_SECTION = "[tool.branchflow.gates]"  # `gates.<pipeline>`: another pipeline's gate
GATE_RULES = ("min", "max", "max_drop_vs_base", "max_drop_vs_champion")
UNITS_SECTION = "[tool.branchflow.gate.units]"
UNITS_KEYS = ("file", "key", "metrics", "confidence", "resamples")


@dataclass(frozen=True)
class UnitSettings:
    """`[tool.branchflow.gate.units]`: per-unit results (one CSV row per held-out unit, named
    by its `key` column) and each metric as a formula of their columns. The drop rules of
    those metrics are judged by a paired bootstrap interval of the change over the units
    both sides scored (`branchflow.paired`) instead of their fixed thresholds."""

    file: str
    key: str
    metrics: Mapping[str, Formula]
    confidence: float = 0.95
    resamples: int = 10_000


@dataclass(frozen=True)
class GateSettings:
    """`[tool.branchflow.gate]`: the rules a branch's metrics must pass, in metric units.

    `min`/`max` are absolute bounds; `max_drop_vs_*` is how much worse than the base branch or
    the production champion a metric may get ("worse" is down, or up for `lower_is_better`).
    """

    key_metric: str | None = None
    lower_is_better: tuple[str, ...] = ()
    min: Mapping[str, float] = field(default_factory=dict)
    max: Mapping[str, float] = field(default_factory=dict)
    max_drop_vs_base: Mapping[str, float] = field(default_factory=dict)
    max_drop_vs_champion: Mapping[str, float] = field(default_factory=dict)
    units: UnitSettings | None = None

    def higher_is_better(self, metric: str) -> bool:
        """Whether a larger value of `metric` is an improvement."""
        return metric not in self.lower_is_better

    def metric_names(self) -> list[str]:
        """Every metric these settings name, each once, `key_metric` first."""
        rules = [*self.min, *self.max, *self.max_drop_vs_base, *self.max_drop_vs_champion]
        named = [self.key_metric or "", *rules, *self.lower_is_better]
        return [name for name in dict.fromkeys(named) if name]


GATE_KEYS = tuple(f.name for f in fields(GateSettings))
MODEL_SECTION = "[tool.branchflow.model]"


@dataclass(frozen=True)
class ModelSettings:
    """`[tool.branchflow.model]`: how `branchflow register` packages the model for MLflow.

    Paths are relative to the project root. `flavor` is `pyfunc` (the default when
    `python_model` is given: an MLflow "model from code" file that calls
    `mlflow.models.set_model`, with `artifacts` as its named files), `sklearn` (the one
    artifact is a pickled or joblib estimator) or `pytorch` (the one artifact is a
    `torch.save`d model or a TorchScript file). `signature` is MLflow's MLmodel signature
    (`inputs`, `outputs`); `key_metrics` are copied into each registered version's tags.
    Without `pip_requirements`, a project with a lock pins `[project].dependencies` plus
    `lock_groups` from it, and one without lets MLflow infer them.
    """

    flavor: str = "pyfunc"
    python_model: str | None = None
    artifacts: Mapping[str, str] = field(default_factory=dict)
    code_paths: tuple[str, ...] = ()
    input_example: str | None = None
    signature: Mapping[str, Any] | None = None
    pip_requirements: tuple[str, ...] | None = None
    lock_groups: tuple[str, ...] = ()
    key_metrics: tuple[str, ...] = ()

    @property
    def source_files(self) -> tuple[str, ...]:
        """What goes into the package besides the artifacts: serving code, code_paths (files
        or folders) and the input example."""
        named = (self.python_model, self.input_example)
        return (*(path for path in named if path), *self.code_paths)


MODEL_KEYS = tuple(f.name for f in fields(ModelSettings))
FLAVORS = ("pyfunc", "sklearn", "pytorch")
SAVED_MODEL = {"sklearn": "a pickled estimator", "pytorch": "a torch.save or TorchScript file"}


AZUREML_SECTION = "[tool.branchflow.azureml]"
# A dated tag, never `:latest`: the same base on every workspace, today and next year. CPU-only
# (the locked torch wheels bring their own CUDA runtime; the node's host brings the driver).
DEFAULT_AZUREML_IMAGE = "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:20260715.v1"
DISTRIBUTIONS = ("pytorch",)


@dataclass(frozen=True)
class AzureMLStage:
    """`[tool.branchflow.azureml.stages.<stage>]`: how one DVC stage (or `foreach` group) runs.

    `distribution = "pytorch"` starts `process_count_per_instance` processes on each of
    `instance_count` nodes (unset: one per GPU of the compute's size, `compile` says how many);
    without a distribution, `instance_count > 1` shards the stage: as many sibling nodes, each
    running it on its share of the work. `timeout` is in seconds.
    """

    compute: str | None = None
    instance_count: int = 1
    distribution: str | None = None
    process_count_per_instance: int | None = None
    timeout: int | None = None

    @property
    def sharded(self) -> bool:
        return self.distribution is None and self.instance_count > 1


@dataclass(frozen=True)
class AzureMLCompute:
    """`[tool.branchflow.azureml.computes.<name>]`: a cluster `submit` creates when missing.

    It scales from 0 nodes to `max_instances`, releasing nodes idle for `idle_seconds`.
    """

    size: str
    max_instances: int = 1
    tier: str = "dedicated"
    idle_seconds: int = 1800


@dataclass(frozen=True)
class AzureMLEnvironment:
    """`[tool.branchflow.azureml.environment]`: base image and pip requirements of every stage.

    Loaded settings default `name` to the base name. Without `pip`, the requirements are the
    lock's pins of `[project].dependencies` plus `lock_groups` (see `branchflow.workspace.lock`).
    """

    name: str = "branchflow"
    image: str = DEFAULT_AZUREML_IMAGE
    python: str = "3.11"
    pip: tuple[str, ...] | None = None
    lock_groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class AzureMLSettings:
    """`[tool.branchflow.azureml]`: compute, data and environment of the compiled pipeline.

    `pythonpath` lists folders (relative to the repository root) put on `PYTHONPATH` of every
    stage; `mlflow_tracking_uri` is the MLflow server stages talk to instead of the workspace's
    own (`azureml://`, which the Azure ML service sets); `stages` maps DVC stage names to run
    settings; `computes` names the clusters `submit` creates when they are missing.
    """

    compute: str = "cpu-cluster"
    datastore: str = "workspaceblobstore"
    data_prefix: str = "dvc"
    pythonpath: tuple[str, ...] = ()
    mlflow_tracking_uri: str | None = None
    environment: AzureMLEnvironment = field(default_factory=AzureMLEnvironment)
    stages: Mapping[str, AzureMLStage] = field(default_factory=dict)
    computes: Mapping[str, AzureMLCompute] = field(default_factory=dict)


AZUREML_KEYS = tuple(f.name for f in fields(AzureMLSettings))
DRIFT_SECTION = "[tool.branchflow.drift]"


@dataclass(frozen=True)
class DriftSettings:
    """`[tool.branchflow.drift]`: how far a data statistic may move before it is drift.

    `threshold` is the default limit on the relative change (0.25: 25 % of the reference
    value); `thresholds` sets relative limits and `absolute` limits on |current - reference|
    for single statistics. Their keys are flattened names (`a.b.c`) or glob patterns
    (`classes.*`); an exact name wins over patterns, then the first matching pattern. A
    statistic with an absolute limit is judged by it alone. `ignore` lists names or patterns
    that are not compared.
    """

    threshold: float = 0.25
    thresholds: Mapping[str, float] = field(default_factory=dict)
    absolute: Mapping[str, float] = field(default_factory=dict)
    ignore: tuple[str, ...] = ()


CI_SECTION = "[tool.branchflow.ci]"
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
RESERVED_ENV = frozenset(  # what the generated jobs set themselves
    {
        "MLFLOW_TRACKING_URI",
        "MLFLOW_TRACKING_TOKEN",
        "BASE_SHA",
        "DEFAULT_BRANCH",
        "DATA",
        "REFERENCE",
        "MODEL",
        "AZURE_SUBSCRIPTION_ID",
        "AZURE_RESOURCE_GROUP",
        "AZUREML_WORKSPACE",
        "AZURE_STORAGE_CONNECTION_STRING",
    }
)
INSTALL_METHODS = ("uv", "requirements", "pip")


@dataclass(frozen=True)
class CIPipeline:
    """`[tool.branchflow.ci.pipelines.<name>]`: the data a pipeline's builds use.

    `pull`: the PR build's `dvc pull` targets (default: the pipeline's `.dvc` sources). The dev
    build pulls `dev_pull` from the DVC remote `dev_remote` and runs `dvc exp run -S` with each
    of `dev_params` (say `data.raw=data/raw/full`); without them it reruns the PR build's data.
    """

    pull: tuple[str, ...] | None = None
    dev_remote: str | None = None
    dev_pull: tuple[str, ...] = ()
    dev_params: tuple[str, ...] = ()


@dataclass(frozen=True)
class RetrainSettings:
    """`[tool.branchflow.ci.retrain]`: scheduled retraining on drift (retrain.yml).

    `statistics` is a command run as `<statistics> <data> <out.json>`; `reference` is the
    committed statistics of the champion's data; `param` is the params.yaml key naming the
    data folder (`data.raw`), set to `data` for the retrain. Without `statistics`, retrain.yml
    retrains when `dvc update` moves the model pipeline's imports; with neither, there is none.
    """

    statistics: str | None = None
    data: str | None = None
    reference: str | None = None
    param: str | None = None
    schedule: str = "17 3 * * 1"  # cron, UTC: Mondays at 03:17


CLOUD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")  # a region or machine type, as CML takes it
GPU_CLOUD_SECRETS = {  # the credentials `cml runner launch` reads, kept as secrets of these names
    "aws": ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
    "azure": ("AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_SUBSCRIPTION_ID", "AZURE_TENANT_ID"),
    "gcp": ("GOOGLE_APPLICATION_CREDENTIALS_DATA",),
}


@dataclass(frozen=True)
class GpuRunnerSettings:
    """`[tool.branchflow.ci.gpu_runner]`: the cloud machine dev.yml launches with `cml runner
    launch` when BRANCHFLOW_COMPUTE is gpu-runner. `cloud`: aws, azure or gcp (its credentials
    come from the secrets `GPU_CLOUD_SECRETS` names); `region`, `type` and `hdd_size` (GB) are
    CML's `--cloud-region`, `--cloud-type` and `--cloud-hdd-size`; `spot` asks for a preemptible
    instance (`--cloud-spot`)."""

    cloud: str = "aws"
    region: str = "us-west"
    type: str = "g4dn.xlarge"
    hdd_size: int = 100
    spot: bool = False


@dataclass(frozen=True)
class CISettings:
    """`[tool.branchflow.ci]`: what `branchflow init` detected, from which it writes `.github/`.

    `install`: "uv" (`uv sync --locked`), "requirements" (`requirements` files) or "pip"
    (`pip install -e .`). `branchflow`: the requirement that installs branchflow, pinned to one
    release or URL, which the comment jobs install too (without extras); empty when the
    project's own install brings it (a uv lock holding it). `renderer`: the folder of
    branchflow's source in this repository, which the comment jobs check out; empty: they
    install `branchflow` alone. `lint` and `test`: the PR checks' commands. `torch`: the
    project trains with torch, so the GPU runner's dev build checks that CUDA works;
    `azureml_groups`: uv groups the Azure ML job adds. `env` (name = value) and `secrets`
    (names of GitHub secrets, passed under their own names) are given to every job that runs a
    pipeline (secrets only to those in an environment); `setup` commands run in the setup
    action before the install. `cloud_login` ("aws", "azure" or "gcp") logs every job that
    pulls or pushes DVC data in to that cloud by OIDC, with its vendor's action, so a DVC remote
    on S3, Azure Blob or GCS needs no long-lived key.
    """

    install: str = "pip"
    requirements: tuple[str, ...] = ()
    branchflow: str = f"branchflow[report,azure]=={__version__}"
    renderer: str = ""
    python: str = "3.11"
    lint: tuple[str, ...] = ()
    test: tuple[str, ...] = ()
    torch: bool = False
    azureml_groups: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    secrets: tuple[str, ...] = ()
    setup: tuple[str, ...] = ()
    cloud_login: str = ""
    pipelines: Mapping[str, CIPipeline] = field(default_factory=dict)
    retrain: RetrainSettings = field(default_factory=RetrainSettings)
    gpu_runner: GpuRunnerSettings = field(default_factory=GpuRunnerSettings)


CI_KEYS = tuple(f.name for f in fields(CISettings))
CI_PIPELINE_KEYS = tuple(f.name for f in fields(CIPipeline))
RETRAIN_KEYS = tuple(f.name for f in fields(RetrainSettings))
GPU_RUNNER_KEYS = tuple(f.name for f in fields(GpuRunnerSettings))
DRIFT_KEYS = tuple(f.name for f in fields(DriftSettings))
AZUREML_ENVIRONMENT_KEYS = tuple(f.name for f in fields(AzureMLEnvironment))
AZUREML_STAGE_KEYS = tuple(f.name for f in fields(AzureMLStage))
AZUREML_COMPUTE_KEYS = tuple(f.name for f in fields(AzureMLCompute))
COMPUTE_TIERS = ("dedicated", "low_priority")
CLOUD_LOGINS = ("", "aws", "azure", "gcp")  # `ci.cloud_login`: "" logs in nowhere


PRODUCTION_SECTION = "[tool.branchflow.production]"


@dataclass(frozen=True)
class ProductionSettings:
    """`[tool.branchflow.production]`: with `declared` (a pin file, relative to the root),
    production is declared in git: `promote --declare` prepares a pull request, `reconcile`
    makes the registry match the merged file, and direct `promote` and `rollback` are refused.
    `restore`: the scheduled reconcile moves an alias moved outside git back, instead of only
    failing on it."""

    declared: str | None = None
    restore: bool = False


PRODUCTION_KEYS = tuple(f.name for f in fields(ProductionSettings))


@dataclass(frozen=True)
class Settings:
    """The `[tool.branchflow]` settings, with defaults filled in."""

    base_name: str
    production_model: str
    name_pattern: str = DEFAULT_NAME_PATTERN
    dev_branch: str = "dev"
    main_branch: str = "main"
    gate: GateSettings = field(default_factory=GateSettings)
    azureml: AzureMLSettings = field(default_factory=AzureMLSettings)
    model: ModelSettings | None = None
    drift: DriftSettings = field(default_factory=DriftSettings)
    pipelines: Mapping[str, str] = field(default_factory=dict)  # dvc.yaml path -> its name
    gates: Mapping[str, GateSettings] = field(default_factory=dict)  # pipeline name -> its gate
    ci: CISettings = field(default_factory=CISettings)
    production: ProductionSettings = field(default_factory=ProductionSettings)


KNOWN_KEYS = tuple(f.name for f in fields(Settings))
# the keys that are sub-tables
TABLES = ("gate", "model", "azureml", "drift", "pipelines", "gates", "ci", "production")


def load_settings(root: Path) -> Settings:
    """Read `root/pyproject.toml`; a missing file or table gives the defaults."""
    path = root / PYPROJECT
    return parse_settings(path, root, _read_toml(path))


def parse_settings(path: Path, root: Path, document: dict[str, Any]) -> Settings:
    """The settings of the project in `root` from `document`, the parsed `path`."""
    section = "[tool.branchflow]"
    table = _table(path, section, document.get("tool", {}).get("branchflow", {}), KNOWN_KEYS)
    values = {key: _string(path, key, value) for key, value in table.items() if key not in TABLES}
    base = values.get("base_name") or default_base_name(document, root)
    settings = Settings(
        base_name=base,
        production_model=values.get("production_model", f"{base}_production"),
        name_pattern=values.get("name_pattern", DEFAULT_NAME_PATTERN),
        dev_branch=values.get("dev_branch", "dev"),
        main_branch=values.get("main_branch", "main"),
        gate=_gate_settings(path, table.get("gate", {})),
        model=_model_settings(path, table.get("model")),
        azureml=_azureml_settings(path, table.get("azureml", {}), base),
        drift=_drift_settings(path, table.get("drift", {})),
        pipelines=_pipeline_names(path, table.get("pipelines", {})),
        gates={
            name: _gate_settings(path, gate, f"[tool.branchflow.gates.{name}]")
            for name, gate in _table(path, GATES_SECTION, table.get("gates", {})).items()
        },
        ci=_ci_settings(path, table.get("ci", {})),
        production=_production_settings(path, table.get("production", {})),
    )
    _check_pattern(path, settings.name_pattern)
    return settings


def _production_settings(path: Path, table: object) -> ProductionSettings:
    table = _table(path, PRODUCTION_SECTION, table, PRODUCTION_KEYS)
    declared = table.get("declared")
    if declared is not None:
        declared = _relative_paths(path, "production.declared", [declared])[0]
        problem = not_one_line(declared)
        if problem:
            raise BranchflowError(f"{path}: [tool.branchflow] production.declared {problem}")
    return ProductionSettings(
        declared=declared, restore=_flag(path, "production.restore", table.get("restore", False))
    )


def _pipeline_names(path: Path, table: object) -> dict[str, str]:
    """`[tool.branchflow.pipelines]`: `"<folder>/dvc.yaml" = "<name>"`, a name per pipeline."""
    names = _table(path, PIPELINES_SECTION, table)
    for dvcfile, name in names.items():
        if Path(dvcfile).name != "dvc.yaml" or not isinstance(name, str):
            raise BranchflowError(
                f"{path}: {PIPELINES_SECTION} maps a dvc.yaml path to a name, got "
                f"{dvcfile!r} = {name!r}"
            )
        if not PIPELINE_NAME.fullmatch(name):
            raise BranchflowError(
                f"{path}: {PIPELINES_SECTION} {dvcfile!r}: the name {name!r} must be lowercase "
                "letters, digits and '-', starting with a letter"
            )
    return dict(names)


MAX_PYPROJECT_BYTES = 1024 * 1024


def _read_toml(path: Path) -> dict[str, Any]:
    """The TOML document at `path` ({} if there is none), read only from a regular file of at
    most `MAX_PYPROJECT_BYTES` in UTF-8 (a link to a device must not hang the read)."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise BranchflowError(f"{path}: cannot be read ({exc.strerror}); fix the file") from None
    if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_PYPROJECT_BYTES:
        raise BranchflowError(
            f"{path}: not a regular file of at most {MAX_PYPROJECT_BYTES} bytes; make it one"
        )
    try:
        return tomllib.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise BranchflowError(f"{path}: not UTF-8 ({exc.reason}); save it as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise BranchflowError(f"{path}: invalid TOML ({exc}); fix the syntax") from exc


def _reject_unknown_keys(
    path: Path, table: dict[str, Any], known: tuple[str, ...], section: str
) -> None:
    for key in table:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(known)}"
            raise BranchflowError(f"{path}: unknown key '{key}' in {section}; {hint}")


def _gate_settings(path: Path, table: object, section: str = GATE_SECTION) -> GateSettings:
    table = _table(path, section, table, GATE_KEYS)
    key_metric = table.get("key_metric")
    lower = table.get("lower_is_better", [])
    if not isinstance(lower, list) or not all(isinstance(name, str) and name for name in lower):
        raise BranchflowError(
            f"{path}: {section} lower_is_better must be a list of metric names, got {lower!r}"
        )
    return GateSettings(
        key_metric=None if key_metric is None else _string(path, "gate.key_metric", key_metric),
        lower_is_better=tuple(lower),
        **{rule: _thresholds(path, section, rule, table.get(rule, {})) for rule in GATE_RULES},
        units=None if "units" not in table else _unit_settings(path, section, table["units"]),
    )


def _unit_settings(path: Path, gate: str, table: object) -> UnitSettings:
    section = f"{gate.removesuffix(']')}.units]"
    table = _table(path, section, table, UNITS_KEYS)
    for required in ("file", "key", "metrics"):
        if required not in table:
            raise BranchflowError(f"{path}: {section} needs `{required}`; see docs/report.md")
    formulas = _table(path, f"{section} metrics", table["metrics"])
    metrics: dict[str, Formula] = {}
    for name, text in formulas.items():
        if not isinstance(text, str):
            raise BranchflowError(f"{path}: {section} metrics '{name}' must be a formula string")
        try:
            metrics[name] = parse_formula(text)
        except ValueError as exc:
            raise BranchflowError(f"{path}: {section} metrics '{name}' = {text!r}: {exc}") from None
    confidence = table.get("confidence", 0.95)
    if not isinstance(confidence, float) or not 0.5 <= confidence < 1:
        raise BranchflowError(
            f"{path}: {section} confidence must be a number from 0.5 to below 1, e.g. 0.95"
        )
    return UnitSettings(
        file=_relative_paths(path, "gate.units.file", [table["file"]])[0],
        key=_string(path, "gate.units.key", table["key"]),
        metrics=metrics,
        confidence=confidence,
        resamples=_count(path, "gate.units.resamples", table.get("resamples", 10_000)),
    )


def _thresholds(
    path: Path, section: str, rule: str, table: object, prefix: str = ""
) -> dict[str, float]:
    """`{metric = number}`; nested tables (from unquoted dotted keys) join with dots."""
    if not isinstance(table, dict):
        raise BranchflowError(
            f"{path}: {section} {rule} must be a table of metric = number, got {table!r}"
        )
    flat: dict[str, float] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        bound = rule in ("min", "max")
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if isinstance(value, dict):
            flat.update(_thresholds(path, section, rule, value, f"{name}."))
        elif number and math.isfinite(value) and (bound or value >= 0):
            flat[name] = float(value)
        else:
            kind = "a finite number" if bound else "a finite number >= 0"
            raise BranchflowError(
                f"{path}: {section} {rule}: '{name}' must be {kind}, got {value!r}"
            )
    return flat


def _model_settings(path: Path, table: object) -> ModelSettings | None:
    if table is None:
        return None
    table = _table(path, MODEL_SECTION, table, MODEL_KEYS)
    artifacts = table.get("artifacts", {})
    if not isinstance(artifacts, dict) or not all(
        isinstance(value, str) and value for value in artifacts.values()
    ):
        raise BranchflowError(
            f"{path}: {MODEL_SECTION} artifacts must be a table of name = path, got {artifacts!r}"
        )
    flavor = _flavor(path, table)
    signature = table.get("signature")
    if signature is not None and (not isinstance(signature, dict) or "inputs" not in signature):
        raise BranchflowError(
            f"{path}: {MODEL_SECTION} signature must be a table with inputs (and outputs), "
            f"as in an MLmodel file; got {signature!r}"
        )
    example, pip = table.get("input_example"), table.get("pip_requirements")
    serve = table.get("python_model")
    return ModelSettings(
        flavor=flavor,
        python_model=None if serve is None else _string(path, "model.python_model", serve),
        artifacts=artifacts,
        code_paths=_strings(path, "model.code_paths", table.get("code_paths", [])),
        input_example=None if example is None else _string(path, "model.input_example", example),
        signature=signature,
        pip_requirements=None if pip is None else _strings(path, "model.pip_requirements", pip),
        lock_groups=_strings(path, "model.lock_groups", table.get("lock_groups", [])),
        key_metrics=_strings(path, "model.key_metrics", table.get("key_metrics", [])),
    )


def _flavor(path: Path, table: dict[str, Any]) -> str:
    """The table's flavor, once its other keys fit it."""
    flavor = table.get("flavor", "pyfunc")
    if flavor not in FLAVORS:
        raise BranchflowError(
            f"{path}: {MODEL_SECTION} flavor must be one of {', '.join(FLAVORS)}, got {flavor!r}"
        )
    if flavor == "pyfunc" and "python_model" not in table:
        raise BranchflowError(
            f"{path}: {MODEL_SECTION} needs python_model = the file that calls "
            'mlflow.models.set_model(...), or flavor = "sklearn" or "pytorch"'
        )
    if flavor != "pyfunc" and "python_model" in table:
        raise BranchflowError(
            f"{path}: {MODEL_SECTION} python_model is for flavor pyfunc; drop it, or set "
            'flavor = "pyfunc"'
        )
    if flavor != "pyfunc" and len(table.get("artifacts", {})) != 1:
        raise BranchflowError(
            f"{path}: {MODEL_SECTION} flavor {flavor} needs one artifact, {SAVED_MODEL[flavor]}: "
            'artifacts = { model = "<path>" }'
        )
    return flavor


def _string(path: Path, key: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BranchflowError(
            f"{path}: [tool.branchflow] {key} must be a non-empty string, got {value!r}"
        )
    return _one_line(path, key, value)


def not_one_line(text: str) -> str | None:
    """Why `text` cannot be written into a generated workflow, or None: a line break or other
    control character ends the YAML line it sits in, and GitHub evaluates `${{` anywhere, quoted
    or not. Every other character is quoted for the shell or YAML where it lands."""
    if "${{" in text:
        return "holds '${{', which GitHub would evaluate as an expression"
    if any(ord(char) < 32 or ord(char) == 127 for char in text):
        return "holds a line break or another control character"
    return None


def _one_line(path: Path, key: str, value: str) -> str:
    problem = not_one_line(value)
    if problem:
        raise BranchflowError(
            f"{path}: [tool.branchflow] {key} {problem}; write it as one line of plain text"
        )
    return value


def default_base_name(document: dict[str, Any], root: Path) -> str:
    """`[project].name` normalised as in PEP 503, else the project folder's name."""
    name = document.get("project", {}).get("name")
    if isinstance(name, str) and name:
        return re.sub(r"[-_.]+", "-", name).lower()
    return root.resolve().name


def _check_pattern(path: Path, pattern: str) -> None:
    try:
        fields = [(name, spec, how) for _, name, spec, how in string.Formatter().parse(pattern)]
    except ValueError as exc:
        raise BranchflowError(f"{path}: [tool.branchflow] name_pattern: {exc}") from exc
    names = {name for name, _, _ in fields if name is not None}
    unknown = names - NAME_PLACEHOLDERS
    formatted = any(spec or conversion for name, spec, conversion in fields if name is not None)
    if unknown or "branch" not in names or formatted:
        raise BranchflowError(
            f"{path}: [tool.branchflow] name_pattern {pattern!r} must use {{branch}} and only "
            f"the placeholders {{{'}, {'.join(sorted(NAME_PLACEHOLDERS))}}}, with no format "
            "spec or conversion"
        )


def _azureml_settings(path: Path, table: object, base: str) -> AzureMLSettings:
    """`[tool.branchflow.azureml]` with its `environment` and `stages.<stage>` tables."""
    table = _table(path, AZUREML_SECTION, table, AZUREML_KEYS)
    text = {
        key: _string(path, f"azureml.{key}", table[key])
        for key in ("compute", "datastore", "data_prefix", "mlflow_tracking_uri")
        if key in table
    }
    env = _table(
        path,
        "[tool.branchflow.azureml.environment]",
        table.get("environment", {}),
        AZUREML_ENVIRONMENT_KEYS,
    )
    stages = _table(path, "[tool.branchflow.azureml.stages]", table.get("stages", {}))
    computes = _table(path, "[tool.branchflow.azureml.computes]", table.get("computes", {}))
    pip = env.get("pip")
    return AzureMLSettings(
        compute=text.get("compute", "cpu-cluster").removeprefix("azureml:"),
        datastore=text.get("datastore", "workspaceblobstore"),
        data_prefix=text.get("data_prefix", "dvc").strip("/"),
        pythonpath=_relative_paths(path, "azureml.pythonpath", table.get("pythonpath", [])),
        mlflow_tracking_uri=text.get("mlflow_tracking_uri"),
        environment=AzureMLEnvironment(
            name=_string(path, "azureml.environment.name", env.get("name", base)),
            image=_string(
                path, "azureml.environment.image", env.get("image", DEFAULT_AZUREML_IMAGE)
            ),
            python=_string(path, "azureml.environment.python", env.get("python", "3.11")),
            pip=None if pip is None else _strings(path, "azureml.environment.pip", pip),
            lock_groups=_strings(
                path, "azureml.environment.lock_groups", env.get("lock_groups", [])
            ),
        ),
        stages={name: _azureml_stage(path, name, value) for name, value in stages.items()},
        computes={name: _azureml_compute(path, name, value) for name, value in computes.items()},
    )


def _azureml_stage(path: Path, name: str, table: object) -> AzureMLStage:
    key = f"azureml.stages.{name}"
    table = _table(path, f"[tool.branchflow.{key}]", table, AZUREML_STAGE_KEYS)
    compute, distribution = table.get("compute"), table.get("distribution")
    if compute is not None:
        compute = _string(path, f"{key}.compute", compute).removeprefix("azureml:")
    if distribution is not None and distribution not in DISTRIBUTIONS:
        raise BranchflowError(
            f"{path}: [tool.branchflow] {key}.distribution must be one of "
            f"{', '.join(DISTRIBUTIONS)}, got {distribution!r}"
        )
    instance_count = _count(path, f"{key}.instance_count", table.get("instance_count", 1))
    processes = table.get("process_count_per_instance")
    if processes is not None:
        processes = _count(path, f"{key}.process_count_per_instance", processes)
    if distribution is None and (processes or 1) > 1:
        raise BranchflowError(
            f"{path}: [tool.branchflow] {key} starts several processes per node without a "
            'distribution; set distribution = "pytorch" or drop process_count_per_instance'
        )
    timeout = table.get("timeout")
    return AzureMLStage(
        compute=compute,
        distribution=distribution,
        timeout=None if timeout is None else _count(path, f"{key}.timeout", timeout),
        instance_count=instance_count,
        process_count_per_instance=processes,
    )


def _azureml_compute(path: Path, name: str, table: object) -> AzureMLCompute:
    key = f"azureml.computes.{name}"
    table = _table(path, f"[tool.branchflow.{key}]", table, AZUREML_COMPUTE_KEYS)
    if "size" not in table:
        raise BranchflowError(
            f"{path}: [tool.branchflow.{key}] needs size, the VM size (e.g. Standard_DS3_v2)"
        )
    tier = table.get("tier", "dedicated")
    if tier not in COMPUTE_TIERS:
        raise BranchflowError(
            f"{path}: [tool.branchflow] {key}.tier must be one of {', '.join(COMPUTE_TIERS)}, "
            f"got {tier!r}"
        )
    return AzureMLCompute(
        size=_string(path, f"{key}.size", table["size"]),
        max_instances=_count(path, f"{key}.max_instances", table.get("max_instances", 1)),
        tier=tier,
        idle_seconds=_count(path, f"{key}.idle_seconds", table.get("idle_seconds", 1800)),
    )


def _table(
    path: Path, section: str, table: object, known: tuple[str, ...] | None = None
) -> dict[str, Any]:
    """`table` as a dict, once it is known to be a table with (if `known`) only known keys."""
    if not isinstance(table, dict):
        raise BranchflowError(f"{path}: {section} must be a table; write it as a table")
    if known is not None:
        _reject_unknown_keys(path, table, known, section)
    return table


def _count(path: Path, key: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise BranchflowError(
            f"{path}: [tool.branchflow] {key} must be a whole number >= 1, got {value!r}"
        )
    return value


def _flag(path: Path, key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise BranchflowError(
            f"{path}: [tool.branchflow] {key} must be true or false, got {value!r}"
        )
    return value


def _strings(path: Path, key: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise BranchflowError(
            f"{path}: [tool.branchflow] {key} must be a list of non-empty strings, got {value!r}"
        )
    return tuple(_one_line(path, key, entry) for entry in value)


def _relative_paths(path: Path, key: str, value: object) -> tuple[str, ...]:
    paths = _strings(path, key, value)
    for entry in paths:
        if Path(entry).is_absolute() or ".." in Path(entry).parts:
            raise BranchflowError(
                f"{path}: [tool.branchflow] {key}: {entry!r} must be a folder inside the "
                "repository, relative to its root"
            )
    return paths


def _ci_settings(path: Path, table: object) -> CISettings:
    table = _table(path, CI_SECTION, table, CI_KEYS)
    install = table.get("install", "pip")
    if install not in INSTALL_METHODS:
        raise BranchflowError(
            f"{path}: {CI_SECTION} install must be one of {', '.join(INSTALL_METHODS)}, "
            f"got {install!r}"
        )
    pipelines = _table(path, f"{CI_SECTION} pipelines", table.get("pipelines", {}))
    env = _job_env(path, table.get("env", {}))
    secrets = _variable_names(path, "ci.secrets", table.get("secrets", []))
    both = sorted(set(env) & set(secrets))
    if both:
        raise BranchflowError(
            f"{path}: {CI_SECTION} {', '.join(both)} in both env and secrets; keep one"
        )
    return CISettings(
        install=install,
        requirements=_relative_paths(path, "ci.requirements", table.get("requirements", [])),
        branchflow=_branchflow_requirement(path, table.get("branchflow", CISettings.branchflow)),
        renderer=_text(path, "ci.renderer", table.get("renderer", "")),
        python=_string(path, "ci.python", table.get("python", "3.11")),
        lint=_strings(path, "ci.lint", table.get("lint", [])),
        test=_strings(path, "ci.test", table.get("test", [])),
        torch=_flag(path, "ci.torch", table.get("torch", False)),
        azureml_groups=_strings(path, "ci.azureml_groups", table.get("azureml_groups", [])),
        env=env,
        secrets=secrets,
        setup=_strings(path, "ci.setup", table.get("setup", [])),
        cloud_login=_choice(path, "ci.cloud_login", table.get("cloud_login", ""), CLOUD_LOGINS),
        pipelines={name: _ci_pipeline(path, name, value) for name, value in pipelines.items()},
        retrain=_retrain_settings(path, table.get("retrain", {})),
        gpu_runner=_gpu_runner_settings(path, table.get("gpu_runner", {})),
    )


def _choice(path: Path, key: str, value: object, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        shown = ", ".join(repr(choice) for choice in allowed)
        raise BranchflowError(
            f"{path}: [tool.branchflow] {key} must be one of {shown}, got {value!r}"
        )
    return str(value)


def _job_env(path: Path, table: object) -> dict[str, str]:
    """`ci.env`: environment variables by name, each a string."""
    names = _variable_names(path, "ci.env", list(_table(path, f"{CI_SECTION} env", table)))
    env = cast(dict[str, object], table)
    return {name: _text(path, f"ci.env.{name}", env[name]) for name in names}


def _variable_names(path: Path, key: str, value: object) -> tuple[str, ...]:
    """Names of environment variables (or of GitHub secrets, passed under their own names)
    that the generated jobs may set: not GitHub's own, nor one that branchflow's jobs set."""
    names = _strings(path, key, value)
    for name in names:
        if not ENV_NAME.fullmatch(name) or name.upper().startswith("GITHUB_"):
            raise BranchflowError(
                f"{path}: [tool.branchflow] {key}: {name!r} is no environment variable name "
                "(letters, digits and _, not starting with a digit or GITHUB_); rename it"
            )
        if name in RESERVED_ENV:
            raise BranchflowError(
                f"{path}: [tool.branchflow] {key}: {name} is set by branchflow's jobs "
                f"({', '.join(sorted(RESERVED_ENV))}); use another name"
            )
    return names


def _ci_pipeline(path: Path, name: str, table: object) -> CIPipeline:
    key = f"ci.pipelines.{name}"
    table = _table(path, f"[tool.branchflow.{key}]", table, CI_PIPELINE_KEYS)
    pull = table.get("pull")
    remote = table.get("dev_remote")
    return CIPipeline(
        pull=None if pull is None else _relative_paths(path, f"{key}.pull", pull),
        dev_remote=None if remote is None else _string(path, f"{key}.dev_remote", remote),
        dev_pull=_relative_paths(path, f"{key}.dev_pull", table.get("dev_pull", [])),
        dev_params=_strings(path, f"{key}.dev_params", table.get("dev_params", [])),
    )


def _retrain_settings(path: Path, table: object) -> RetrainSettings:
    table = _table(path, "[tool.branchflow.ci.retrain]", table, RETRAIN_KEYS)
    values = {key: _string(path, f"ci.retrain.{key}", value) for key, value in table.items()}
    if values.get("statistics") and not {"data", "reference"} <= set(values):
        raise BranchflowError(
            f"{path}: [tool.branchflow.ci.retrain] statistics needs data (the folder to watch) "
            "and reference (the champion data's statistics); add them"
        )
    return RetrainSettings(**values)


def _gpu_runner_settings(path: Path, table: object) -> GpuRunnerSettings:
    section = "[tool.branchflow.ci.gpu_runner]"
    table = _table(path, section, table, GPU_RUNNER_KEYS)
    default = GpuRunnerSettings()
    cloud = table.get("cloud", default.cloud)
    if cloud not in GPU_CLOUD_SECRETS:
        raise BranchflowError(
            f"{path}: {section} cloud must be one of {', '.join(GPU_CLOUD_SECRETS)}, got {cloud!r}"
        )
    names = {key: table.get(key, getattr(default, key)) for key in ("region", "type")}
    for key, value in names.items():
        if not isinstance(value, str) or not CLOUD_NAME.fullmatch(value):
            raise BranchflowError(
                f"{path}: {section} {key} must be a cloud's name for it (letters, digits and "
                f"._+-, like {getattr(default, key)!r}), got {value!r}"
            )
    return GpuRunnerSettings(
        cloud=cloud,
        hdd_size=_count(path, "ci.gpu_runner.hdd_size", table.get("hdd_size", default.hdd_size)),
        spot=_flag(path, "ci.gpu_runner.spot", table.get("spot", default.spot)),
        **names,
    )


def _branchflow_requirement(path: Path, value: object) -> str:
    """`ci.branchflow`: empty, or a requirement of branchflow pinned to one release or URL."""
    text = _text(path, "ci.branchflow", value)
    if text and renderer_requirement(text) is None:
        raise BranchflowError(
            f"{path}: [tool.branchflow] ci.branchflow must pin one branchflow "
            f"(branchflow[report,azure]=={__version__}, or branchflow[report,azure] @ <url>), "
            f"got {text!r}; pin it"
        )
    return text


def renderer_requirement(requirement: str) -> str | None:
    """`requirement` without its extras (what the comment jobs install), or None unless it is
    branchflow pinned to one version (`==`) or to a URL."""
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        parsed = Requirement(requirement)
    except InvalidRequirement:
        return None
    if parsed.name.lower() != "branchflow" or parsed.marker is not None:
        return None
    if parsed.url:
        return f"branchflow @ {parsed.url}"
    (pin, *more) = [*parsed.specifier] or [None]
    if pin is None or more or pin.operator != "==" or "*" in pin.version:
        return None
    return f"branchflow=={pin.version}"


def _text(path: Path, key: str, value: object) -> str:
    """A string that may be empty."""
    if not isinstance(value, str):
        raise BranchflowError(f"{path}: [tool.branchflow] {key} must be a string, got {value!r}")
    return _one_line(path, key, value)


def _drift_settings(path: Path, table: object) -> DriftSettings:
    table = _table(path, DRIFT_SECTION, table, DRIFT_KEYS)
    return DriftSettings(
        threshold=_limit(path, "threshold", table.get("threshold", 0.25)),
        thresholds=_drift_limits(path, "thresholds", table.get("thresholds", {})),
        absolute=_drift_limits(path, "absolute", table.get("absolute", {})),
        ignore=_strings(path, "drift.ignore", table.get("ignore", [])),
    )


def _drift_limits(path: Path, rule: str, table: object, prefix: str = "") -> dict[str, float]:
    """`{statistic = limit}`; nested tables (from unquoted dotted keys) join with dots."""
    limits: dict[str, float] = {}
    for key, value in _table(path, f"{DRIFT_SECTION} {rule}", table).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            limits.update(_drift_limits(path, rule, value, f"{name}."))
        else:
            limits[name] = _limit(path, f"{rule}: '{name}'", value, rule)
    return limits


def _limit(path: Path, name: str, value: object, rule: str = "thresholds") -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        kind = (
            "an absolute change >= 0, in the statistic's units"
            if rule == "absolute"
            else "a relative change >= 0 (0.25 is 25 %)"
        )
        raise BranchflowError(f"{path}: {DRIFT_SECTION} {name} must be {kind}, got {value!r}")
    return float(value)
