"""Project settings from the `[tool.branchflow]` table of `pyproject.toml`.

Every key is optional, so a project without the table works with the defaults. Unknown keys
are errors: a typo must not silently fall back to a default.
"""

from __future__ import annotations

import difflib
import re
import string
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from branchflow.errors import BranchflowError

PYPROJECT = "pyproject.toml"
NAME_PLACEHOLDERS = frozenset({"pipeline_type", "base", "branch"})
DEFAULT_NAME_PATTERN = "{pipeline_type}_{base}_{branch}"


@dataclass(frozen=True)
class Settings:
    """The `[tool.branchflow]` settings, with defaults filled in."""

    base_name: str
    production_model: str
    name_pattern: str = DEFAULT_NAME_PATTERN
    dev_branch: str = "dev"
    main_branch: str = "main"


KNOWN_KEYS = tuple(f.name for f in fields(Settings))


def load_settings(root: Path) -> Settings:
    """Read `root/pyproject.toml`; a missing file or table gives the defaults."""
    path = root / PYPROJECT
    document = _read_toml(path)
    table = document.get("tool", {}).get("branchflow", {})
    if not isinstance(table, dict):
        raise BranchflowError(f"{path}: [tool.branchflow] must be a table; write it as a table")
    _reject_unknown_keys(path, table)
    values = {key: _string(path, key, value) for key, value in table.items()}
    base = values.get("base_name") or _default_base_name(document, root)
    settings = Settings(
        base_name=base,
        production_model=values.get("production_model", f"{base}_production"),
        name_pattern=values.get("name_pattern", DEFAULT_NAME_PATTERN),
        dev_branch=values.get("dev_branch", "dev"),
        main_branch=values.get("main_branch", "main"),
    )
    _check_pattern(path, settings.name_pattern)
    return settings


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise BranchflowError(f"{path}: invalid TOML ({exc}); fix the syntax") from exc


def _reject_unknown_keys(path: Path, table: dict[str, Any]) -> None:
    for key in table:
        if key not in KNOWN_KEYS:
            close = difflib.get_close_matches(key, KNOWN_KEYS, n=1)
            hint = (
                f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(KNOWN_KEYS)}"
            )
            raise BranchflowError(f"{path}: unknown key '{key}' in [tool.branchflow]; {hint}")


def _string(path: Path, key: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BranchflowError(
            f"{path}: [tool.branchflow] {key} must be a non-empty string, got {value!r}"
        )
    return value


def _default_base_name(document: dict[str, Any], root: Path) -> str:
    """`[project].name` normalised as in PEP 503, else the project folder's name."""
    name = document.get("project", {}).get("name")
    if isinstance(name, str) and name:
        return re.sub(r"[-_.]+", "-", name).lower()
    return root.resolve().name


def _check_pattern(path: Path, pattern: str) -> None:
    try:
        names = {field for _, field, _, _ in string.Formatter().parse(pattern) if field is not None}
    except ValueError as exc:
        raise BranchflowError(f"{path}: [tool.branchflow] name_pattern: {exc}") from exc
    unknown = names - NAME_PLACEHOLDERS
    if unknown or "branch" not in names:
        raise BranchflowError(
            f"{path}: [tool.branchflow] name_pattern {pattern!r} must use {{branch}} and only "
            f"the placeholders {{{'}, {'.join(sorted(NAME_PLACEHOLDERS))}}}"
        )
