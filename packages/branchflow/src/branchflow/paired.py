"""Noise-aware comparison: how a metric changed between two models scored on the same units
(held-out videos, users, days), with a paired bootstrap confidence interval.

A metric is a ratio of weighted sums of per-unit columns, e.g. F1 from counts,
`2*tp / (2*tp + fp + fn)`; a bare number counts units, so `correct / 1` is the mean of
`correct`. Resampling units (the same units for both models, which is what pairs them) and
recomputing both metrics gives the spread of the change that the choice of units alone would
cause; an interval that excludes zero is a change this evaluation set can tell from noise.
"""

from __future__ import annotations

import ast
import csv
import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

# How an interval reads: does it exclude zero, and which way (the report's renderer checks these).
CHANGE_VERDICTS = ("better", "worse", "no detectable change")
UNIT = ""  # the weight of this pseudo-column counts units: a bare number in a formula
BLOCK = 1000  # resamples drawn at a time: 1,000 x 1,000 units of weights is 8 MB
SEED = 0  # a fixed seed: the same inputs give the same interval, run after run


@dataclass(frozen=True)
class Formula:
    """A metric as `sum(numerator) / sum(denominator)` over units, each a weighted column sum."""

    text: str
    numerator: Mapping[str, float]
    denominator: Mapping[str, float]

    @property
    def columns(self) -> tuple[str, ...]:
        """The per-unit columns the formula reads, sorted."""
        return tuple(sorted({*self.numerator, *self.denominator} - {UNIT}))

    def parts(self, units: Units, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Each unit's (numerator, denominator) contribution, in the order of `names`."""
        rows = [units.rows[name] for name in names]
        return _weighted(self.numerator, rows), _weighted(self.denominator, rows)


def parse_formula(text: str) -> Formula:
    """`a / b` with `a` and `b` sums of `number * column` terms; ValueError says what is wrong."""
    try:
        tree = ast.parse(text, mode="eval").body
    except SyntaxError as exc:
        raise ValueError(f"not a formula ({exc.msg})") from exc
    if not (isinstance(tree, ast.BinOp) and isinstance(tree.op, ast.Div)):
        raise ValueError(
            "must be a ratio `numerator / denominator`, e.g. `2*tp / (2*tp + fp + fn)`"
        )
    return Formula(text, _linear(tree.left), _linear(tree.right))


def _linear(node: ast.expr, sign: float = 1.0) -> dict[str, float]:
    """The weight of each column in a sum of `number * column` terms."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Sub):
        right = _linear(node.right, -sign if isinstance(node.op, ast.Sub) else sign)
        return _add(_linear(node.left, sign), right)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        return _linear(node.operand, -sign if isinstance(node.op, ast.USub) else sign)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
        for number, term in ((node.left, node.right), (node.right, node.left)):
            if _number(number) is not None:
                return _linear(term, sign * _number(number))  # type: ignore[operator]
    if isinstance(node, ast.Name):
        return {node.id: sign}
    if _number(node) is not None:
        return {UNIT: sign * _number(node)}  # type: ignore[operator]
    raise ValueError(f"`{ast.unparse(node)}` is not a number, a column or a sum of them")


def _number(node: ast.expr) -> float | None:
    value = node.value if isinstance(node, ast.Constant) else None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _add(left: dict[str, float], right: dict[str, float]) -> dict[str, float]:
    return {key: left.get(key, 0.0) + right.get(key, 0.0) for key in {*left, *right}}


def _weighted(weights: Mapping[str, float], rows: list[Mapping[str, float]]) -> np.ndarray:
    import numpy as np

    return np.array(
        [sum(w * (1.0 if c == UNIT else row[c]) for c, w in weights.items()) for row in rows]
    )


@dataclass(frozen=True)
class Units:
    """A per-unit results table: each unit's name and its numeric columns."""

    source: str
    rows: Mapping[str, Mapping[str, float]]


def read_units(text: str, key: str, source: str) -> Units:
    """A CSV of one row per unit, named by its `key` column; ValueError names the bad cell."""
    reader = csv.DictReader(io.StringIO(text))
    if key not in (reader.fieldnames or []):
        raise ValueError(f"{source}: no `{key}` column (has {', '.join(reader.fieldnames or [])})")
    rows: dict[str, dict[str, float]] = {}
    for line, row in enumerate(reader, start=2):
        name = row.pop(key)
        if name in rows:
            raise ValueError(f"{source}:{line}: unit `{name}` appears twice")
        values: dict[str, float] = {}
        for column, cell in row.items():
            try:
                values[column] = float(cell)
            except (TypeError, ValueError):
                raise ValueError(f"{source}:{line}: `{column}` is {cell!r}, not a number") from None
            if not math.isfinite(values[column]):
                raise ValueError(f"{source}:{line}: `{column}` is {cell}, not a finite number")
        rows[name] = values
    return Units(source, rows)


def check_columns(units: Units, formula: Formula, metric: str) -> None:
    """ValueError when `units` lacks a column that `metric`'s formula reads."""
    have = next(iter(units.rows.values()), {})
    missing = [column for column in formula.columns if column not in have]
    if units.rows and missing:
        raise ValueError(
            f"{units.source}: no `{'`, `'.join(missing)}` column for `{metric}` = {formula.text}"
        )


@dataclass(frozen=True)
class Interval:
    """The change of a metric (branch minus reference) and its bootstrap confidence interval."""

    change: float
    low: float
    high: float
    units: int
    confidence: float

    def verdict(self, higher_is_better: bool) -> str:
        """One of `CHANGE_VERDICTS`: better, worse, or no detectable change (it holds 0)."""
        better, worse, neither = CHANGE_VERDICTS
        if self.low > 0:
            return better if higher_is_better else worse
        if self.high < 0:
            return worse if higher_is_better else better
        return neither


def paired_interval(
    branch: Units,
    reference: Units,
    formula: Formula,
    *,
    resamples: int,
    confidence: float,
    seed: int = SEED,
) -> Interval | None:
    """The percentile bootstrap interval of `formula`'s change from `reference` to `branch`
    over the units both scored; None when fewer than two units are shared or a side's metric
    is undefined (a zero denominator)."""
    import numpy as np

    shared = sorted(branch.rows.keys() & reference.rows.keys())
    if len(shared) < 2:
        return None
    parts = np.column_stack([*formula.parts(branch, shared), *formula.parts(reference, shared)])
    totals = parts.sum(axis=0)
    if totals[1] == 0 or totals[3] == 0:
        return None
    rng = np.random.default_rng(seed)
    n = len(shared)
    changes = []
    for start in range(0, resamples, BLOCK):
        count = min(BLOCK, resamples - start)
        picks = rng.integers(0, n, size=(count, n)) + np.arange(count)[:, None] * n
        weights = np.bincount(picks.ravel(), minlength=count * n).reshape(count, n)
        sums = weights @ parts
        with np.errstate(divide="ignore", invalid="ignore"):
            changes.append(sums[:, 0] / sums[:, 1] - sums[:, 2] / sums[:, 3])
    spread = np.concatenate(changes)
    spread = spread[np.isfinite(spread)]  # resamples where a side's metric is undefined
    tail = (1 - confidence) / 2
    low, high = np.quantile(spread, [tail, 1 - tail])
    change = totals[0] / totals[1] - totals[2] / totals[3]
    return Interval(float(change), float(low), float(high), n, confidence)


def metric_value(units: Units, formula: Formula) -> float | None:
    """`formula` over every unit of `units` (None: a zero denominator)."""
    numerator, denominator = formula.parts(units, list(units.rows))
    total = denominator.sum()
    return float(numerator.sum() / total) if total else None
