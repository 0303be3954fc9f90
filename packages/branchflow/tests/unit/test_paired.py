"""The paired bootstrap: formulas, per-unit tables, and intervals against closed forms."""

from __future__ import annotations

import math
import random
import re

import pytest

from branchflow.paired import (
    Units,
    metric_value,
    paired_interval,
    parse_formula,
    read_units,
)

F1 = parse_formula("2*tp / (2*tp + fp + fn)")
MEAN = parse_formula("x / 1")


def units(column: str, values: list[float]) -> Units:
    return Units("test", {f"u{i}": {column: value} for i, value in enumerate(values)})


def test_a_formula_is_a_ratio_of_weighted_column_sums() -> None:
    assert (F1.numerator, F1.denominator) == ({"tp": 2.0}, {"tp": 2.0, "fp": 1.0, "fn": 1.0})
    assert F1.columns == ("fn", "fp", "tp")
    signed = parse_formula("(a - 0.5*b + -c) / (2 + a*3)")
    assert signed.numerator == {"a": 1.0, "b": -0.5, "c": -1.0}
    assert signed.denominator == {"": 2.0, "a": 3.0}
    counts = Units("t", {"v1": {"tp": 14, "fp": 0, "fn": 1}, "v2": {"tp": 8, "fp": 2, "fn": 0}})
    assert metric_value(counts, F1) == pytest.approx(44 / 47)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tp + fp", "must be a ratio"),
        ("tp / (tp * fp)", "`tp * fp` is not a number, a column"),
        ("sqrt(tp) / 1", "`sqrt(tp)` is not"),
        ("tp / ", "not a formula"),
        ("tp / True", "`True` is not"),
    ],
)
def test_a_formula_outside_the_form_is_refused_naming_the_part(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_formula(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name,x\na,1\na,2\n", "units.csv:3: unit `a` appears twice"),
        ("name,x\na,one\n", "units.csv:2: `x` is 'one', not a number"),
        ("name,x\na,nan\n", "units.csv:2: `x` is nan, not a finite number"),
        ("video,x\na,1\n", "units.csv: no `name` column"),
    ],
)
def test_a_bad_units_file_names_its_line_and_cell(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        read_units(text, "name", "units.csv")


def test_the_interval_of_a_mean_difference_matches_the_normal_closed_form() -> None:
    """For `x / 1` (a mean), the paired change's percentile interval over many units is the
    mean difference ± z * sd(d) / sqrt(n), as the central limit theorem gives."""
    rng = random.Random(7)
    n = 2000
    a = [rng.gauss(0.0, 1.0) for _ in range(n)]
    b = [x - 0.1 + rng.gauss(0.0, 0.5) for x in a]  # b = a - 0.1 + noise: d = a - b
    d = [x - y for x, y in zip(a, b, strict=True)]
    mean = sum(d) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / n)
    half = 1.959964 * sd / math.sqrt(n)
    interval = paired_interval(
        units("x", a), units("x", b), MEAN, resamples=10_000, confidence=0.95
    )
    assert interval is not None
    assert interval.change == pytest.approx(mean)
    assert interval.low == pytest.approx(mean - half, abs=0.1 * half)
    assert interval.high == pytest.approx(mean + half, abs=0.1 * half)
    assert interval.verdict(higher_is_better=True) == "better"
    assert interval.verdict(higher_is_better=False) == "worse"


def test_identical_results_are_no_change_and_every_run_gives_the_same_interval() -> None:
    counts = Units("t", {f"v{i}": {"tp": 10 + i % 3, "fp": i % 2, "fn": i % 4} for i in range(16)})
    same = paired_interval(counts, counts, F1, resamples=2000, confidence=0.95)
    assert same is not None
    assert (same.change, same.low, same.high) == (0.0, 0.0, 0.0)
    assert same.verdict(higher_is_better=True) == "no detectable change"
    worse = Units("t", {k: {**v, "fn": v["fn"] + 3} for k, v in counts.rows.items()})
    first = paired_interval(worse, counts, F1, resamples=2000, confidence=0.95)
    assert first == paired_interval(worse, counts, F1, resamples=2000, confidence=0.95)
    assert first is not None and first.high < 0
    assert first.verdict(higher_is_better=True) == "worse"


def test_a_few_units_flipping_both_ways_is_no_detectable_change() -> None:
    """200 units scored 0 or 1: the branch loses 5 and gains 2. Its mean drops by 0.015, more
    than a fixed 0.01 would allow, but the units cannot tell that from noise."""
    base = [1.0] * 190 + [0.0] * 10
    branch = [0.0] * 5 + [1.0] * 185 + [1.0] * 2 + [0.0] * 8
    interval = paired_interval(
        units("x", branch), units("x", base), MEAN, resamples=10_000, confidence=0.95
    )
    assert interval is not None
    assert interval.change == pytest.approx(-0.015)
    assert interval.low < 0 < interval.high


def test_no_interval_without_two_shared_units_or_with_an_undefined_side() -> None:
    one = units("x", [1.0])
    assert paired_interval(one, one, MEAN, resamples=100, confidence=0.95) is None
    zeros = Units("t", {f"v{i}": {"tp": 0, "fp": 0, "fn": 0} for i in range(4)})
    assert paired_interval(zeros, zeros, F1, resamples=100, confidence=0.95) is None
