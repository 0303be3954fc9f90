"""`branchflow drift`: has the data moved away from what the champion was trained on?

The project computes its data statistics as a JSON object; the toolkit knows nothing of what
they measure. Nested objects and lists are flattened to dotted names: `{"a": {"b": [1, 2]}}`
holds `a.b.0` and `a.b.1`. A number drifts when its change from the reference exceeds its
limit in `[tool.branchflow.drift]` (relative, or absolute where set); any other value (text,
true/false, null) drifts when it changes at all. A statistic in only one of the two files is
drift too: the data gained or lost something.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TypeGuard, cast

from branchflow.errors import BranchflowError
from branchflow.settings import DRIFT_SECTION, DriftSettings, load_settings
from branchflow.workspace.context import append_github_file

MAX_STATS_BYTES = 64 * 1024 * 1024
Leaf = float | str | bool | None


@dataclass(frozen=True)
class Limit:
    """How far a number may move: a share of the reference, or (absolute) in its units."""

    value: float
    absolute: bool = False

    def __str__(self) -> str:
        return f"{self.value:g}" if self.absolute else f"{self.value * 100:g}%"


@dataclass(frozen=True)
class Change:
    """One statistic in both files; `limit` applies when both values are numbers."""

    name: str
    reference: Leaf
    current: Leaf
    limit: Limit

    @property
    def numeric(self) -> bool:
        return _is_number(self.reference) and _is_number(self.current)

    @property
    def delta(self) -> float:
        """current - reference, or relative to |reference| (inf from a zero reference)."""
        reference, current = self.reference, self.current
        assert _is_number(reference) and _is_number(current), "delta of a non-numeric change"
        if self.limit.absolute:
            return current - reference
        if reference == 0:
            return 0.0 if current == 0 else math.inf
        return (current - reference) / abs(reference)

    @property
    def drifted(self) -> bool:
        if self.numeric:
            return abs(self.delta) > self.limit.value
        return type(self.reference) is not type(self.current) or self.reference != self.current

    def detail(self) -> str:
        """`a -> b  (how much, limit)`."""
        values = f"{_show(self.reference)} -> {_show(self.current)}"
        if not self.numeric:
            return f"{values}  ({'changed' if self.drifted else 'unchanged'})"
        return f"{values}  ({_show_delta(self.delta, self.limit)}, limit {self.limit})"


@dataclass(frozen=True)
class Drift:
    """Every compared statistic, and those in only one file; drift when any one moved."""

    changes: tuple[Change, ...]
    only_in_reference: tuple[str, ...] = ()
    only_in_current: tuple[str, ...] = ()

    @property
    def drifted(self) -> bool:
        missing = self.only_in_reference or self.only_in_current
        return bool(missing) or any(change.drifted for change in self.changes)

    def lines(self) -> list[str]:
        """One line per statistic, sorted by name, then the verdict."""
        rows = {c.name: (c.drifted, c.detail()) for c in self.changes}
        rows |= {name: (True, "only in the reference") for name in self.only_in_reference}
        rows |= {name: (True, "only in the current statistics") for name in self.only_in_current}
        width = max(map(len, rows), default=0)
        ordered = sorted(rows.items())
        lines = [
            f"{'DRIFT' if drifted else 'ok':<5}  {name:<{width}}  {detail}"
            for name, (drifted, detail) in ordered
        ]
        moved = [name for name, (drifted, _) in ordered if drifted]
        return [*lines, f"drift: {', '.join(moved)}" if moved else "no drift"]


def read_stats(path: Path) -> dict[str, Leaf]:
    """A statistics file: a JSON object, flattened to `dotted.name -> leaf`."""
    if not path.exists():
        raise BranchflowError(f"{path}: not found; write the data statistics first")
    try:
        if not path.is_file() or path.stat().st_size > MAX_STATS_BYTES:
            raise BranchflowError(
                f"{path}: not a regular file of at most {MAX_STATS_BYTES} bytes; write the data "
                "statistics there"
            )
        document = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_no_duplicates)
        if not isinstance(document, dict):
            raise BranchflowError(f"{path}: must be a JSON object of statistic name -> value")
        flat = list(_flatten(document))
    except (OSError, ValueError) as exc:
        raise BranchflowError(f"{path}: not a readable JSON file ({exc})") from None
    except RecursionError:
        raise BranchflowError(f"{path}: nested too deep to be statistics; flatten it") from None
    stats: dict[str, Leaf] = {}
    for name, value in flat:
        if name in stats:
            raise BranchflowError(f"{path}: the statistic {name} is there twice; rename one")
        stats[name] = value
    if not stats:
        raise BranchflowError(f"{path}: holds no statistics; write at least one")
    bad = [name for name, value in stats.items() if _is_number(value) and not _finite(value)]
    if bad:
        raise BranchflowError(f"{path}: {', '.join(bad)} must be finite numbers")
    return {name: float(v) if _is_number(v) else v for name, v in stats.items()}


def compare_stats(
    reference: Mapping[str, Leaf], current: Mapping[str, Leaf], settings: DriftSettings
) -> Drift:
    """Each statistic of both files against its limit; those of only one file are listed."""
    names = set(reference) | set(current)
    _require_patterns_match(names, settings)
    kept = {name for name in names if not _matches(name, settings.ignore)}
    shared = sorted(kept & set(reference) & set(current))
    return Drift(
        tuple(Change(n, reference[n], current[n], limit_for(n, settings)) for n in shared),
        tuple(sorted(kept - set(current))),
        tuple(sorted(kept - set(reference))),
    )


def limit_for(name: str, settings: DriftSettings) -> Limit:
    """The statistic's limit: an exact name before a pattern, `absolute` before `thresholds`
    at the same level, else the default relative `threshold`."""
    for exact in (True, False):
        for limits, absolute in ((settings.absolute, True), (settings.thresholds, False)):
            value = _lookup(name, limits, exact)
            if value is not None:
                return Limit(value, absolute)
    return Limit(settings.threshold)


def check_drift(
    root: Path, reference: Path, current: Path, threshold: float | None = None
) -> Drift:
    """Compare the statistics files with `root`'s `[tool.branchflow.drift]`; `threshold`
    replaces its default relative limit."""
    settings = load_settings(root).drift
    if threshold is not None:
        settings = DriftSettings(threshold, settings.thresholds, settings.absolute, settings.ignore)
    return compare_stats(read_stats(reference), read_stats(current), settings)


def write_github_output(drift: Drift, env: Mapping[str, str] = os.environ) -> bool:
    """Append `drift=true|false` to `$GITHUB_OUTPUT` when it is set; say whether it was."""
    if not env.get("GITHUB_OUTPUT"):
        return False
    append_github_file(env, {"GITHUB_OUTPUT": [f"drift={'true' if drift.drifted else 'false'}\n"]})
    return True


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    counts = Counter(key for key, _ in pairs)  # linear: 40,000 keys must not take seconds
    twice = sorted(key for key, count in counts.items() if count > 1)
    if twice:
        raise ValueError(f"key {', '.join(map(repr, twice))} given twice")
    return dict(pairs)


def _flatten(value: object, prefix: str = "") -> Iterator[tuple[str, Leaf]]:
    """Leaves of nested objects and lists as (`a.b.0`, leaf); empty ones hold none."""
    items: Iterable[tuple[object, object]]
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = ((str(index), item) for index, item in enumerate(value))
    else:  # what else JSON holds: a number, a string, true, false or null
        yield prefix.removesuffix("."), cast(Leaf, value)
        return
    for key, item in items:
        yield from _flatten(item, f"{prefix}{key}.")


def _require_patterns_match(names: set[str], settings: DriftSettings) -> None:
    """A limit or ignore entry that names no statistic is a typo, not a silent no-op."""
    rules = {"thresholds": settings.thresholds, "absolute": settings.absolute}
    for rule, patterns in {**rules, "ignore": settings.ignore}.items():
        unknown = [pattern for pattern in patterns if not _matches_any(pattern, names)]
        if unknown:
            known = sorted(names)
            shown = ", ".join(known[:10]) + (f", ... ({len(known)} in all)" if known[10:] else "")
            raise BranchflowError(
                f"{DRIFT_SECTION} {rule} name {', '.join(unknown)}, which match no statistic; "
                f"known: {shown}"
            )


def _lookup(name: str, limits: Mapping[str, float], exact: bool) -> float | None:
    """The limit for `name` itself, or for the first pattern (in file order) matching it."""
    if exact:
        return limits.get(name)
    return next((limit for pattern, limit in limits.items() if fnmatchcase(name, pattern)), None)


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatchcase(name, pattern) for pattern in patterns)


def _matches_any(pattern: str, names: set[str]) -> bool:
    return any(fnmatchcase(name, pattern) for name in names)


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _finite(value: float) -> bool:
    """Whether float(value) is finite; JSON integers can be too large for a float."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _show(value: Leaf) -> str:
    return f"{value:g}" if _is_number(value) else json.dumps(value)


def _show_delta(delta: float, limit: Limit) -> str:
    if limit.absolute:
        return f"{delta:+g}"
    return "new, reference 0" if math.isinf(delta) else f"{delta:+.1%}"
