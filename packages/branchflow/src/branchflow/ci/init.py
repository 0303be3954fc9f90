"""`branchflow init`: set a DVC project up once, then keep `.github/` equal to its config.

The first run detects how the project installs, lints and tests, and writes what it found as
`[tool.branchflow.ci]` in pyproject.toml (the project owns it from then on); every run writes
the ignore entries and the files `branchflow.ci.workflows` generates. `--check` writes nothing.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from branchflow import __version__
from branchflow.ci.workflows import foreign_files, generated_files, stale_files
from branchflow.errors import BranchflowError
from branchflow.generated import Plan
from branchflow.settings import PYPROJECT, default_base_name, parse_settings
from branchflow.workspace.dag import read_dag
from branchflow.workspace.lock import read_requirements, requirements_files

GITIGNORE = ".gitignore"
IGNORED = (  # what branchflow writes into a workspace: never committed
    "/mlflow.db",
    "/mlartifacts/",
    "/report.json",
    "/report.md",
    "/report_files/",
    "/gate-exit.txt",
)
IGNORE_HEADER = "# branchflow: the local MLflow store and what `branchflow report` writes"
LINTERS = {  # a linter's config file -> the PR checks' commands
    "ruff": ("ruff check", "ruff format --check"),
    "flake8": ("flake8",),
}


def plan(root: Path) -> Plan:
    """The files `init` writes in `root`, from its config (detected first if it has none)."""
    _require_dvc_project(root)
    files = {PYPROJECT: _pyproject_text(root), GITIGNORE: _gitignore_text(root)}
    document = tomllib.loads(files[PYPROJECT])
    workflows = generated_files(root, parse_settings(root / PYPROJECT, root, document))
    foreign = foreign_files(root, workflows)
    files.update({path: text for path, text in workflows.items() if path not in foreign})
    return Plan(files, stale_files(root, workflows), kept=tuple(foreign))


def detect(root: Path, document: dict[str, Any]) -> dict[str, Any]:
    """`[tool.branchflow.ci]` for the project in `root`, from its files."""
    groups = document.get("dependency-groups", {})
    uv = (root / "uv.lock").is_file()
    requirements = list(requirements_files(root))
    table: dict[str, Any] = {"install": _install_method(uv, requirements, document)}
    if not uv and requirements:
        table["requirements"] = requirements
    table["branchflow"] = "" if uv and _locks_branchflow(root) else _installed_requirement()
    renderer = _renderer_source(root)
    if renderer:
        table["renderer"] = renderer
    python = root / ".python-version"
    if python.is_file():
        table["python"] = python.read_text(encoding="utf-8").strip()
    table["lint"] = list(_lint_commands(root, document))
    table["test"] = ["pytest"] if _has_tests(root, document) else []
    if "torch" in _dependency_names(document):
        table["torch"] = True
    if uv and "azureml" in groups:
        table["azureml_groups"] = ["azureml"]
    return table


def _installed_requirement() -> str:
    """The requirement that installs the branchflow running now, pinned: its URL and commit
    when pip or uv installed it from a git URL (PEP 610's direct_url.json), else its version."""
    from importlib.metadata import distribution

    extras = "branchflow[report,azure]"
    direct = json.loads(distribution("branchflow").read_text("direct_url.json") or "{}")
    vcs = direct.get("vcs_info", {})
    if vcs.get("vcs") == "git" and vcs.get("commit_id"):
        url, subdirectory = direct["url"], direct.get("subdirectory")
        fragment = f"#subdirectory={subdirectory}" if subdirectory else ""
        return f"{extras} @ git+{url}@{vcs['commit_id']}{fragment}"
    return f"{extras}=={__version__}"


def _dependency_names(document: dict[str, Any], root: Path | None = None) -> set[str]:
    """The names of what `[project]`, its optional dependencies and dependency groups require,
    and (given the root) its requirements files."""
    from packaging.requirements import InvalidRequirement, Requirement

    project = document.get("project", {})
    groups = [*document.get("dependency-groups", {}).values()]
    groups += project.get("optional-dependencies", {}).values()
    texts = [*project.get("dependencies", [])]
    texts += [item for group in groups for item in group if isinstance(item, str)]
    if root is not None:
        texts += [
            line for file in requirements_files(root) for line in read_requirements(root / file)
        ]
    names = set()
    for text in texts:
        try:
            names.add(Requirement(text).name.lower())
        except InvalidRequirement:
            continue
    return names


def _install_method(uv: bool, requirements: list[str], document: dict[str, Any]) -> str:
    if uv:
        return "uv"
    return "requirements" if requirements or "project" not in document else "pip"


def _pyproject_text(root: Path) -> str:
    """pyproject.toml with `[tool.branchflow.ci]` (and a `base_name`) added when missing."""
    import tomlkit  # keeps comments and layout; only `init` edits pyproject.toml

    path = root / PYPROJECT
    text = _read(path) or ""
    try:
        document = tomlkit.parse(text)
    except tomlkit.exceptions.TOMLKitError as error:
        raise BranchflowError(f"{path}: not valid TOML ({error}); fix it, then rerun") from None
    plain = tomllib.loads(text)
    branchflow = plain.get("tool", {}).get("branchflow", {})
    if "ci" in branchflow and ("base_name" in branchflow or "name" in plain.get("project", {})):
        return text
    tool = document.setdefault("tool", tomlkit.table(is_super_table=True))
    table = tool.setdefault("branchflow", tomlkit.table())
    if "base_name" not in branchflow and "name" not in plain.get("project", {}):
        table["base_name"] = default_base_name(plain, root)  # today's default, frozen
    if "model" not in branchflow and "ci" not in branchflow:  # the first run only
        model = _model_table(root)
        if model:
            table["model"] = model
    if "ci" not in branchflow:
        ci = tomlkit.table()
        ci.comment("detected by `branchflow init`; .github/ is generated from it")
        for key, value in detect(root, plain).items():
            ci[key] = value
        table["ci"] = ci
    return tomlkit.dumps(document)


SAVED_FLAVORS = {  # a model file's suffix -> the flavor that packages it
    ".pkl": "sklearn",
    ".pickle": "sklearn",
    ".joblib": "sklearn",
    ".pt": "pytorch",
    ".pth": "pytorch",
}


def _model_table(root: Path) -> Any:
    """`[tool.branchflow.model]` for the first `artifacts:` entry of `type: model` (what DVC's
    model registry and dvclive declare) whose file a flavor packages; None without one."""
    import tomlkit

    for path in read_dag(root).model_artifacts:
        flavor = SAVED_FLAVORS.get(Path(path).suffix.lower())
        if flavor:
            table = tomlkit.table()
            table.comment("seeded by `branchflow init` from dvc.yaml's artifacts (type: model)")
            table["flavor"] = flavor
            table["artifacts"] = {"model": path}
            return table
    return None


def _gitignore_text(root: Path) -> str:
    text = _read(root / GITIGNORE) or ""
    present = {line.strip() for line in text.splitlines()}
    missing = [
        entry for entry in IGNORED if entry not in present and entry.lstrip("/") not in present
    ]
    if not missing:
        return text
    block = "\n".join([IGNORE_HEADER, *missing]) + "\n"
    separator = "" if not text or text.endswith("\n") else "\n"
    return f"{text}{separator}{block}"


def _require_dvc_project(root: Path) -> None:
    if not (root / ".dvc").is_dir() or not (root / ".git").exists():
        raise BranchflowError(
            f"{root} is not the root of a git repository with DVC; run `branchflow init` there "
            "(after `git init` and `dvc init`)"
        )


def _locks_branchflow(root: Path) -> bool:
    lock = tomllib.loads((root / "uv.lock").read_text(encoding="utf-8"))
    return any(package.get("name") == "branchflow" for package in lock.get("package", []))


def _renderer_source(root: Path) -> str:
    """The source folder of branchflow in this repository, if the project is branchflow's."""
    for candidate in ("src", *(f"packages/{p.name}/src" for p in sorted(root.glob("packages/*")))):
        if (root / candidate / "branchflow" / "render.py").is_file():
            return candidate
    return ""


def _lint_commands(root: Path, document: dict[str, Any]) -> tuple[str, ...]:
    """The configured linter's commands; through `uvx` (which fetches the tool) when the
    project's install does not bring it, so the PR check never runs a command that is absent."""
    setup_cfg = _read(root / "setup.cfg") or ""
    if "ruff" in document.get("tool", {}) or any(
        (root / name).is_file() for name in ("ruff.toml", ".ruff.toml")
    ):
        tool = "ruff"
    elif (root / ".flake8").is_file() or "[flake8]" in setup_cfg:
        tool = "flake8"
    else:
        return ()
    installed = tool in _dependency_names(document, root)
    return tuple(command if installed else f"uvx {command}" for command in LINTERS[tool])


def _has_tests(root: Path, document: dict[str, Any]) -> bool:
    if "pytest" in document.get("tool", {}) or (root / "pytest.ini").is_file():
        return True
    folders = [root / "tests", root / "test"]
    return any(next(folder.rglob("test_*.py"), None) for folder in folders if folder.is_dir())


def _read(path: Path) -> str | None:
    return path.read_text(encoding="utf-8") if path.is_file() else None
