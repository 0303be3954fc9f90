"""What every stage shares: typed params, clear errors, atomic outputs, parallel maps."""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import shutil
import sys
import tempfile
import zipfile
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


@dataclasses.dataclass(frozen=True)
class Bounds:
    """The values a number param may take; a float must also be finite (no .nan, .inf)."""

    above: float | None = None
    at_least: float | None = None
    below: float | None = None
    at_most: float | None = None
    odd: bool = False

    def problem(self, value: float) -> str | None:
        """What `value` breaks, as `a finite number > 0 and < 1`; None when it is allowed."""
        tests = [
            (self.above, "> {}", lambda bound: value > bound),
            (self.at_least, ">= {}", lambda bound: value >= bound),
            (self.below, "< {}", lambda bound: value < bound),
            (self.at_most, "<= {}", lambda bound: value <= bound),
        ]
        rules = [(text.format(bound), ok(bound)) for bound, text, ok in tests if bound is not None]
        if self.odd:
            rules.append(("odd", value % 2 == 1))
        finite = isinstance(value, int) or math.isfinite(value)
        if finite and all(ok for _, ok in rules):
            return None
        kind = "a whole number" if isinstance(value, int) else "a finite number"
        return " ".join([kind, " and ".join(text for text, _ in rules)]).strip()


def param(default_factory: Callable[[], Any] | None = None, **bounds: Any) -> Any:
    """A params dataclass field whose value `load_params` checks against `Bounds(**bounds)`.

    With `default_factory` the key may be left out: a machine setting such as a worker count,
    which DVC does not track, so an Azure ML node (given only a stage's declared params) and
    a params file without it get the default.
    """
    metadata = {"bounds": Bounds(**bounds)}
    if default_factory is None:
        return dataclasses.field(metadata=metadata)
    return dataclasses.field(default_factory=default_factory, metadata=metadata)


def read_text(path: Path, fix: str) -> str:
    """The UTF-8 text of `path`; a file that is missing or not UTF-8 is a StageError."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StageError(f"{path}: not found; {fix}") from None
    except UnicodeDecodeError as exc:
        byte = exc.object[exc.start]
        raise StageError(
            f"{path}: not UTF-8 text (byte 0x{byte:02x} at offset {exc.start}); {fix}"
        ) from None
    except OSError as exc:
        raise StageError(f"{path}: cannot be read ({exc.strerror}); {fix}") from None


# What reading a file that is corrupt or not what it should be raises: numpy, zip, torch, json.
UNREADABLE = (OSError, ValueError, EOFError, KeyError, TypeError, RuntimeError, zipfile.BadZipFile)


@contextmanager
def reading(path: Path, stage: str) -> Iterator[None]:
    """Turn a failure to read `path`, an output of `stage`, into a StageError saying so."""
    try:
        yield
    except UNREADABLE as exc:
        raise StageError(
            f"{path}: not readable as an output of stage `{stage}` ({type(exc).__name__}); "
            f"rerun it: dvc repro {stage}"
        ) from None


def read_json(path: Path, stage: str) -> Any:
    """The JSON document at `path`, an output of `stage`."""
    with reading(path, stage):
        return json.loads(path.read_text(encoding="utf-8"))


def write_json(path: Path, document: Any, indent: int | None = None) -> None:
    """Write `document` to `path` as JSON, atomically; see `require_finite`."""
    require_finite(path, document)
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(document, indent=indent) + "\n", encoding="utf-8")


def require_finite(path: Path, document: Any) -> None:
    """Refuse a document for `path` with a NaN or an infinity: JSON has neither."""
    bad = _non_finite(document, "")
    if bad:
        where, value = bad
        raise StageError(
            f"{path}: '{where}' came out {value}, which JSON cannot hold; nothing was written "
            "(a NaN usually means an empty input: check the data and params it was made from)"
        )


def _non_finite(value: Any, where: str) -> tuple[str, float] | None:
    """The first (dotted key, value) in `value` that is a NaN or an infinity."""
    if isinstance(value, float) and not math.isfinite(value):
        return where, value
    if not isinstance(value, dict | list | tuple):
        return None
    for key, item in value.items() if isinstance(value, dict) else enumerate(value):
        found = _non_finite(item, f"{where}.{key}" if where else str(key))
        if found:
            return found
    return None


def load_params(cls: type[T], section: str, path: Path = PARAMS_FILE) -> T:
    """Read `section` of `path` into the dataclass `cls`, checking keys, types and bounds.

    A params class whose every key has a default needs neither the file nor the section.
    """
    optional = all(_has_default(field) for field in dataclasses.fields(cls))  # type: ignore[arg-type]
    if not path.exists():
        if optional:
            return cls()
        raise StageError(f"{path}: not found; run the stage from the project root")
    try:
        doc = yaml.safe_load(read_text(path, "save it as UTF-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise StageError(f"{path}: not valid YAML{where}; fix the syntax and rerun") from None
    values = doc.get(section) if isinstance(doc, dict) else None
    if values is None and optional:
        return cls()
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
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        key = f"{section}.{field.name}"
        if field.name not in values:
            if _has_default(field):
                continue
            raise StageError(f"{path}: missing key '{key}'; add it to params.yaml")
        value = _check_type(values[field.name], types[field.name], key, path)
        number = isinstance(value, int | float) and not isinstance(value, bool)
        problem = field.metadata.get("bounds", Bounds()).problem(value) if number else None
        if problem:
            raise StageError(
                f"{path}: '{key}' must be {problem}, got {value!r}; fix it in params.yaml"
            )
        kwargs[field.name] = value
    return cls(**kwargs)


def _has_default(field: dataclasses.Field[Any]) -> bool:
    return (
        field.default_factory is not dataclasses.MISSING or field.default is not dataclasses.MISSING
    )


def _check_type(value: Any, expected: type, key: str, path: Path) -> Any:
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    ok = isinstance(value, expected) and not (expected is not bool and isinstance(value, bool))
    if not ok:
        hint = " (YAML reads 1e-3 as text: write 1.0e-3 or 0.001)" if _numeric(value) else ""
        raise StageError(
            f"{path}: '{key}' must be {expected.__name__}, got {value!r}{hint}; "
            "fix it in params.yaml"
        )
    return value


def _numeric(value: Any) -> bool:
    """Whether `value` is text that reads as a number: PyYAML keeps `1e-3` as a string."""
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return isinstance(value, str)


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path` to write into; move it into place on success.

    Works for files and directories. On any error the temporary is removed and an
    existing `path` is left untouched, so no half-written output survives. A run that was
    killed cannot clean up: the next one removes what it left (see `remove_leftovers`).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        _replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_leftovers(path: Path) -> None:
    """Remove the temporaries a killed run of `atomic_output(path)` left beside `path`.

    Only `.<name>.<random>.tmp` (random holds no dot, so no other output's temporaries match)
    and `.<name>.old`, `path`'s own. One run of a stage at a time, as `dvc repro` ensures.
    """
    own = re.compile(rf"\.{re.escape(path.name)}\.(?:[^.]+\.tmp|old)")
    for entry in path.parent.iterdir():
        if own.fullmatch(entry.name) and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)


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
    """Map `fn` over `items` in `workers` processes (inline for 1), with a progress bar.

    More workers than usable cores only thrash (and each holds a video in memory), so their
    number is capped at the cores, with a note: a params file serves every machine.
    """
    items = list(items)
    cores = usable_cores()
    if workers > cores:
        note = f"note: {desc}: {workers} workers asked for, {cores} usable cores; using {cores}"
        print(note, file=sys.stderr)
        workers = cores
    if workers <= 1:
        return list(tqdm(map(fn, items), total=len(items), desc=desc, disable=None))
    chunks = max(1, len(items) // (workers * 8))  # few round trips, yet balanced
    with ProcessPoolExecutor(max_workers=workers) as pool:
        results = pool.map(fn, items, chunksize=chunks)
        return list(tqdm(results, total=len(items), desc=desc, disable=None))


def shard(items: Iterable[T]) -> list[T]:
    """This process's share of `items` when a stage runs as several shards: every
    `BRANCHFLOW_SHARD_COUNT`-th item from `BRANCHFLOW_SHARD_INDEX`, in the given order (sort it
    first). Without the variables, all of them (one shard of one, as under `dvc repro`)."""
    index, count = (os.environ.get(f"BRANCHFLOW_SHARD_{key}", "") for key in ("INDEX", "COUNT"))
    if not index and not count:
        return list(items)
    if not (index.isdigit() and count.isdigit() and int(index) < int(count)):
        raise StageError(
            f"$BRANCHFLOW_SHARD_INDEX={index!r} of $BRANCHFLOW_SHARD_COUNT={count!r}: need "
            "0 <= index < count; unset both to run every item"
        )
    return list(items)[int(index) :: int(count)]


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def run(main: Callable[[], None]) -> None:
    """Run a stage's `main`, turning StageError into a one-line message and exit code 1."""
    try:
        main()
    except StageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
