"""The gate: does this branch's model meet `[tool.branchflow.gate]`? One verdict, for both
`branchflow gate` (its exit status) and `branchflow report` (its first lines)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from branchflow.report.compare import Comparison, Metric, compare, open_dvc, resolve_base
from branchflow.report.render import EPSILON, fmt
from branchflow.settings import GATE_SECTION, GateSettings, load_settings
from branchflow.workspace.context import resolve_context
from branchflow.workspace.dag import read_dag
from branchflow.workspace.naming import names_for
from branchflow.workspace.pipelines import scope

# Metrics are stored rounded, so a drop of exactly the tolerance may come out a hair above it.


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
        comparison = compare(repo, base, champion, env, judged.metrics_files)
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
            _drops(gate, gate.max_drop_vs_base, current, found, base.ref, checks, notes)
    if base is not None and comparison.base_run:
        run, experiment = comparison.base_run, comparison.base_experiment
        notes.append(f"{base.ref}'s metrics: MLflow run `{run}` in experiment `{experiment}`")
    if gate.max_drop_vs_champion:
        if champion is None:
            notes.append(f"no champion: {comparison.champion_missing}; champion rules skipped")
        else:
            against = f"champion v{champion.version}"
            _drops(
                gate, gate.max_drop_vs_champion, current, champion.metrics, against, checks, notes
            )
    return Verdict(tuple(checks), tuple(notes))


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
) -> None:
    """Check that no metric in `rules` got worse than in `reference` by more than allowed."""
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
        worse = other - value if gate.higher_is_better(name) else value - other
        ok = worse <= allowed + EPSILON
        moved = f"{fmt(other)} → {fmt(value)}"
        if ok:
            text = f"`{name}` vs {against}: {moved}, within the {fmt(allowed)} drop allowed"
        else:
            text = (
                f"`{name}` got worse by {fmt(worse)} vs {against} ({moved}); "
                f"at most {fmt(allowed)} allowed"
            )
        checks.append(Check(ok, text))


def key_metric(gate: GateSettings, comparison: Comparison) -> Metric | None:
    """The metric a report leads with: `key_metric`, else the first one a rule names."""
    by_name = {m.name: m for m in comparison.metrics}
    first = next((name for name in gate.metric_names() if name in by_name), None)
    return by_name[first] if first else next(iter(comparison.metrics), None)
