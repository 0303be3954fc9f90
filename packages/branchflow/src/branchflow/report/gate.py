"""The gate: does this branch's model meet `[tool.branchflow.gate]`? One verdict, for both
`branchflow gate` (its exit status) and `branchflow report` (its first lines)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from branchflow.paired import (
    Interval,
    Units,
    check_columns,
    metric_value,
    paired_interval,
)
from branchflow.report.compare import Comparison, Metric, compare, open_dvc, resolve_base
from branchflow.report.render import EPSILON, fmt, interval_text
from branchflow.settings import (
    GATE_SECTION,
    UNITS_SECTION,
    GateSettings,
    UnitSettings,
    load_settings,
)
from branchflow.workspace.context import resolve_context
from branchflow.workspace.dag import read_dag
from branchflow.workspace.naming import names_for
from branchflow.workspace.pipelines import scope

# A formula over the units may differ from the metrics file by the file's rounding, not more.
AGREEMENT = 1e-3


@dataclass(frozen=True)
class Check:
    """One rule applied to one metric, as a sentence that says what was found."""

    passed: bool
    text: str


@dataclass(frozen=True)
class Verdict:
    """Every rule's outcome, and notes on the rules that could not be applied."""

    checks: tuple[Check, ...]
    notes: tuple[str, ...]
    # the paired intervals that judged drop rules: "base"/"champion" -> metric -> interval
    intervals: Mapping[str, Mapping[str, Interval]] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """True when no rule failed."""
        return all(check.passed for check in self.checks)

    def lines(self) -> list[str]:
        """The verdict as plain text: a summary line, then one line per rule and note."""
        failed = sum(not check.passed for check in self.checks)
        if failed:
            summary = f"gate failed: {failed} of {len(self.checks)} rules failed"
        elif self.checks:
            summary = f"gate passed: {len(self.checks)} rules"
        else:
            summary = f"gate passed, but checked nothing: add rules under {GATE_SECTION}"
        rules = [f"{'ok' if c.passed else 'FAIL'}: {c.text}" for c in self.checks]
        return [summary, *rules, *(f"note: {note}" for note in self.notes)]


def run_gate(
    root: Path,
    base_ref: str | None,
    *,
    fetch: bool = False,
    env: Mapping[str, str] = os.environ,
    pipeline: str | None = None,
) -> Verdict:
    """Compare the workspace's metrics of `pipeline` (default: the model's) with `base_ref`
    (None: no base) and, for the model's pipeline, the champion; judge them by its gate."""
    settings = load_settings(root)
    judged = scope(root, settings, read_dag(root), pipeline)
    context = resolve_context(root, env, settings)
    production = names_for(context, settings).production_model
    branch = context.base_branch
    base = resolve_base(root, base_ref, fetch=fetch, branch=branch) if base_ref else None
    with open_dvc(root) as repo:
        champion = production if judged.has_model else None
        comparison = compare(repo, base, champion, env, judged.metrics_files, judged.gate.units)
    return evaluate(judged.gate, comparison)


def evaluate(gate: GateSettings, comparison: Comparison) -> Verdict:
    """Apply every rule of `gate` to `comparison`: the one place a verdict is computed.

    A metric that is missing, or is not a finite number (NaN, a string...), fails: a rule
    cannot pass on data it cannot judge. So do the base rules when the base produced metrics
    that cannot be read here; only a base that never produced any (a first run) skips them.
    """
    current = {m.name: m.value for m in comparison.metrics if m.value is not None}
    named = gate.metric_names()
    checks = [_unusable(name, comparison.invalid) for name in named if name not in current]
    notes = [] if named else [f"no rules in {GATE_SECTION}: nothing to check"]
    for name, floor in gate.min.items():
        if name in current:
            ok = current[name] >= floor - EPSILON
            relation = "at least" if ok else "below"
            text = f"`{name}` is {fmt(current[name])}, {relation} the floor {fmt(floor)}"
            checks.append(Check(ok, text))
    for name, ceiling in gate.max.items():
        if name in current:
            ok = current[name] <= ceiling + EPSILON
            relation = "at most" if ok else "above"
            text = f"`{name}` is {fmt(current[name])}, {relation} the ceiling {fmt(ceiling)}"
            checks.append(Check(ok, text))
    intervals: dict[str, dict[str, Interval]] = {}
    if gate.units and comparison.units:
        checks += _agreement(gate.units, comparison.units.branch, current)
    base, champion = comparison.base, comparison.champion
    if gate.max_drop_vs_base:
        if base is None:
            notes.append("no base ref given: max_drop_vs_base rules skipped")
        elif comparison.base_missing:
            text = f"max_drop_vs_base rules cannot be checked: {comparison.base_missing}"
            checks.append(Check(False, text))
        elif not comparison.base_found:
            notes.append(f"no base metrics in {base.ref}: first run, comparison rules skipped")
        else:
            found = {m.name: m.base for m in comparison.metrics if m.base is not None}
            paired = _paired(comparison, "base")
            rules = gate.max_drop_vs_base
            judged = intervals.setdefault("base", {})
            _drops(gate, rules, current, found, base.ref, checks, notes, paired, judged)
    if base is not None and comparison.base_run:
        run, experiment = comparison.base_run, comparison.base_experiment
        notes.append(f"{base.ref}'s metrics: MLflow run `{run}` in experiment `{experiment}`")
    if gate.max_drop_vs_champion:
        if champion is None:
            notes.append(f"no champion: {comparison.champion_missing}; champion rules skipped")
        else:
            against = f"champion v{champion.version}"
            paired = _paired(comparison, "champion")
            rules = gate.max_drop_vs_champion
            judged = intervals.setdefault("champion", {})
            _drops(gate, rules, current, champion.metrics, against, checks, notes, paired, judged)
    return Verdict(tuple(checks), tuple(notes), intervals)


@dataclass(frozen=True)
class Paired:
    """The per-unit results of the branch and of a side it is compared with (None: why not)."""

    branch: Units
    reference: Units | None
    why_not: str | None


def _paired(comparison: Comparison, side: str) -> Paired | None:
    """The branch's and `side`'s per-unit results; None without `[tool.branchflow.gate.units]`."""
    tables = comparison.units
    if tables is None:
        return None
    reference = tables.base if side == "base" else tables.champion
    return Paired(tables.branch, reference, tables.missing.get(side))


def _agreement(units: UnitSettings, branch: Units, current: Mapping[str, float]) -> list[Check]:
    """Failed checks where a formula reads a column the units lack, or does not give the
    branch's metrics-file value from its units (within their rounding): the interval would
    judge another number."""
    checks = []
    for name, formula in units.metrics.items():
        try:
            check_columns(branch, formula, name)
        except ValueError as exc:
            checks.append(Check(False, f"{exc}; fix the stage or {UNITS_SECTION}"))
            continue
        value, found = metric_value(branch, formula), current.get(name)
        if value is not None and found is not None and abs(value - found) > AGREEMENT:
            text = (
                f"`{name}` is {fmt(found)}, but its formula over {units.file} gives "
                f"{fmt(value)}; fix {UNITS_SECTION} metrics or the stage"
            )
            checks.append(Check(False, text))
    return checks


def _unusable(name: str, invalid: Mapping[str, str]) -> Check:
    """The failed check of a metric that a rule names but this branch lacks or spoils."""
    if name in invalid:
        return Check(False, f"`{name}` is {invalid[name]}, not a finite number; fix what writes it")
    return Check(False, f"`{name}` is not in this branch's metrics (named in {GATE_SECTION})")


def _drops(
    gate: GateSettings,
    rules: Mapping[str, float],
    current: Mapping[str, float],
    reference: Mapping[str, float],
    against: str,
    checks: list[Check],
    notes: list[str],
    paired: Paired | None,
    intervals: dict[str, Interval],
) -> None:
    """Check that no metric in `rules` got worse than in `reference` by more than allowed: by
    the paired interval where both sides have per-unit results and a formula for it, else by
    its fixed threshold."""
    for name, allowed in rules.items():
        if name not in current:
            continue  # already failed as missing
        if name not in reference:
            notes.append(f"`{name}` is not in {against}'s metrics: its rule skipped")
            continue
        value, other = current[name], reference[name]
        if not math.isfinite(other):
            notes.append(f"`{name}` is {other} in {against}'s metrics: its rule skipped")
            continue
        moved = f"{fmt(other)} → {fmt(value)}"
        interval = _interval(gate, paired, name, against, notes)
        if interval is not None:
            intervals[name] = interval
            checks.append(_judged(name, interval, gate.higher_is_better(name), moved, against))
            continue
        worse = other - value if gate.higher_is_better(name) else value - other
        ok = worse <= allowed + EPSILON
        if ok:
            text = f"`{name}` vs {against}: {moved}, within the {fmt(allowed)} drop allowed"
        else:
            text = (
                f"`{name}` got worse by {fmt(worse)} vs {against} ({moved}); "
                f"at most {fmt(allowed)} allowed"
            )
        checks.append(Check(ok, text))


def _interval(
    gate: GateSettings, paired: Paired | None, name: str, against: str, notes: list[str]
) -> Interval | None:
    """The paired interval of `name`'s change vs `against`; None (with a note saying why,
    where units are configured) when its fixed threshold must judge it."""
    formula = gate.units.metrics.get(name) if gate.units else None
    if paired is None or gate.units is None or formula is None:
        return None
    if paired.reference is None:
        notes.append(f"`{name}` vs {against}: {paired.why_not}; judged by its fixed threshold")
        return None
    try:
        check_columns(paired.reference, formula, name)
    except ValueError as exc:
        notes.append(f"`{name}` vs {against}: {exc}; judged by its fixed threshold")
        return None
    ours, theirs = paired.branch.rows.keys(), paired.reference.rows.keys()
    if ours != theirs:  # another evaluation set: its metrics do not pair with these
        notes.append(
            f"`{name}` vs {against}: the units differ ({len(ours & theirs)} shared, "
            f"{len(ours - theirs)} only here, {len(theirs - ours)} only there); "
            "judged by its fixed threshold"
        )
        return None
    interval = paired_interval(
        paired.branch,
        paired.reference,
        formula,
        resamples=gate.units.resamples,
        confidence=gate.units.confidence,
    )
    if interval is None:
        notes.append(
            f"`{name}` vs {against}: fewer than 2 units, or a side's value is undefined; "
            "judged by its fixed threshold"
        )
    return interval


def _judged(
    name: str, interval: Interval, higher_is_better: bool, moved: str, against: str
) -> Check:
    """A drop rule judged by the paired interval: it fails when the change is detectably worse."""
    verdict = interval.verdict(higher_is_better)
    text = (
        f"`{name}` vs {against}: {moved}, {verdict} "
        f"({interval_text(interval.low, interval.high, interval.confidence)} of the change "
        f"over {interval.units} paired units)"
    )
    return Check(verdict != "worse", text)


def key_metric(gate: GateSettings, comparison: Comparison) -> Metric | None:
    """The metric a report leads with: `key_metric`, else the first one a rule names."""
    by_name = {m.name: m for m in comparison.metrics}
    first = next((name for name in gate.metric_names() if name in by_name), None)
    return by_name[first] if first else next(iter(comparison.metrics), None)
