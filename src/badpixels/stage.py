"""What every stage shares: typed params, clear errors, atomic outputs, parallel maps."""

from __future__ import annotations

import dataclasses
import difflib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

import yaml
from tqdm import tqdm

PARAMS_FILE = Path("params.yaml")

T = TypeVar("T")
R = TypeVar("R")


class StageError(Exception):
    """Bad input the user can fix; the message names the file and the fix."""


def load_params(cls: type[T], section: str, path: Path = PARAMS_FILE) -> T:
    """Read `section` of `path` into the dataclass `cls`, checking keys and types."""
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise StageError(f"{path}: not found; run the stage from the project root") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise StageError(f"{path}: not valid YAML{where}; fix the syntax and rerun") from None
    values = doc.get(section) if isinstance(doc, dict) else None
    if not isinstance(values, dict):
        raise StageError(f"{path}: no '{section}:' section of key: value pairs; add one")
    return _build(cls, section, values, path)


def _build(cls: type[T], section: str, values: dict[str, Any], path: Path) -> T:
    types = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    for key in values:
        if key not in types:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean '{section}.{close[0]}'?" if close else ""
            raise StageError(f"{path}: unknown key '{section}.{key}'{hint}")
    kwargs = {}
    for name in names:
        if name not in values:
            raise StageError(f"{path}: missing key '{section}.{name}'; add it to params.yaml")
        kwargs[name] = _check_type(values[name], types[name], f"{section}.{name}", path)
    return cls(**kwargs)


def _check_type(value: Any, expected: type, key: str, path: Path) -> Any:
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    ok = isinstance(value, expected) and not (expected is not bool and isinstance(value, bool))
    if not ok:
        raise StageError(
            f"{path}: '{key}' must be {expected.__name__}, got {value!r}; fix it in params.yaml"
        )
    return value


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path` to write into; move it into place on success.

    Works for files and directories. On any error the temporary is removed and an
    existing `path` is left untouched, so no half-written output survives.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        _replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _replace(src: Path, dst: Path) -> None:
    if src.is_dir() and dst.exists():
        old = dst.with_name(f".{dst.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def parallel_map(fn: Callable[[T], R], items: Iterable[T], workers: int, desc: str) -> list[R]:
    """Map `fn` over `items` in `workers` processes (inline for 1), with a progress bar."""
    items = list(items)
    if workers <= 1:
        return list(tqdm(map(fn, items), total=len(items), desc=desc, disable=None))
    chunks = max(1, len(items) // (workers * 8))  # few round trips, yet balanced
    with ProcessPoolExecutor(max_workers=workers) as pool:
        results = pool.map(fn, items, chunksize=chunks)
        return list(tqdm(results, total=len(items), desc=desc, disable=None))


def run(main: Callable[[], None]) -> None:
    """Run a stage's `main`, turning StageError into a one-line message and exit code 1."""
    try:
        main()
    except StageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
