"""`branchflow report`: the pull-request comment a reviewer decides from, as GitHub markdown.

In order: the gate's verdict and reasons, where the run comes from, metrics against the base and
the champion, changed params, the plots `dvc.yaml` defines (PNG files beside the report) and
which stages reran and why. Images use relative paths, as `cml comment update` expects.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from branchflow.compare import (
    WORKSPACE,
    Base,
    Comparison,
    Metric,
    ParamChange,
    StageChange,
    changed_params,
    compare,
    data_versions,
    open_dvc,
    resolve_base,
    stage_changes,
)
from branchflow.config import GateSettings, load_settings
from branchflow.context import Context, names_for, resolve_context
from branchflow.gate import EPSILON, Verdict, describe_change, evaluate, fmt, key_metric
from branchflow.plots import Plot, render_plots

STATUS_WORDS = {
    "rerun": "**rerun**",
    "new": "**new**",
    "reused": "reused (cached)",
    "removed": "removed",
}


def write_report(
    root: Path,
    out: Path,
    base_ref: str | None,
    *,
    fetch: bool = False,
    env: Mapping[str, str] = os.environ,
) -> Verdict:
    """Write the report for the workspace at `root` to `out`, its PNGs to `<out stem>_files/`."""
    settings = load_settings(root)
    context = resolve_context(root, env, settings)
    base = resolve_base(root, base_ref, fetch=fetch) if base_ref else None
    labels = {WORKSPACE: f"{context.branch} (this branch)"}
    if base:
        labels[base.commit] = base.ref
    files = out.parent / f"{out.stem}_files"
    with ThreadPoolExecutor(max_workers=1) as background:
        plotting = background.submit(
            render_plots, root, base.commit if base else None, files, labels
        )
        with open_dvc(root) as repo:
            comparison = compare(repo, base, names_for(context, settings).production_model, env)
            params = changed_params(repo, base) if base else []
        plots, plot_errors = plotting.result()
    verdict = evaluate(settings.gate, comparison)
    sections = [
        _verdict_section(verdict, settings.gate, comparison),
        _header_section(context, base, data_versions(root, base)),
        _metrics_section(comparison, settings.gate),
        _params_section(params, base) if base else "",
        _plots_section(plots, plot_errors, out.parent),
        _stages_section(stage_changes(root, base), base) if base else "",
    ]
    out.write_text("\n\n".join(s for s in sections if s) + "\n", encoding="utf-8")
    return verdict


def _verdict_section(verdict: Verdict, gate: GateSettings, comparison: Comparison) -> str:
    title = "✅ Gate passed" if verdict.passed else "❌ Gate failed"
    metric = key_metric(gate, comparison)
    if metric is not None:
        title += f" · {_code(metric.name)} {_headline(metric, gate, comparison)}"
    lines = [f"## {title}", ""]
    lines += [f"- {'✅ ok' if c.passed else '❌ **FAIL**'}: {c.text}" for c in verdict.checks]
    lines += [f"- note: {note}" for note in verdict.notes]
    return "\n".join(lines)


def _headline(metric: Metric, gate: GateSettings, comparison: Comparison) -> str:
    """The key metric's value and its change against the base, for the first line."""
    base = comparison.base
    if metric.value is None:
        return "is missing on this branch"
    if base is None:
        return fmt(metric.value)
    if metric.change is None:
        reason = "new metric" if comparison.base_found else "no base metrics: first run"
        return f"{fmt(metric.value)} ({reason})"
    change = describe_change(metric.change, gate.higher_is_better(metric.name))
    return f"{fmt(metric.value)} ({change} vs {_code(base.ref)})"


def _header_section(
    context: Context, base: Base | None, data: tuple[str | None, str | None]
) -> str:
    current, at_base = data
    branch = f"{_code(context.branch)} at {_code(context.short_commit)}"
    if context.dirty:
        branch += " with uncommitted changes"
    run = context.run_type + (f" #{context.pr_number}" if context.pr_number else "")
    if context.run_url:
        run += f" ([CI run]({context.run_url}))"
    data_cell = _code(current or "unknown")
    if base:
        data_cell += (
            " (same as base)" if current == at_base else f" (base: {_code(at_base or '-')})"
        )
    row = [
        branch,
        f"{_code(base.ref)} at {_code(base.commit[:7])}" if base else "none",
        data_cell,
        run,
    ]
    return "\n".join(_table(["branch", "base", "data (DVC md5)", "run"], [row]))


def _metrics_section(comparison: Comparison, gate: GateSettings) -> str:
    base, champion = comparison.base, comparison.champion
    headers = ["metric", "this branch"]
    if base:
        headers += [_code(base.ref), "change"]
    if champion:
        headers += [f"champion v{champion.version}", "vs champion"]
    named = gate.metric_names()
    rank = {name: index for index, name in enumerate(named)}
    lead, rest = [], []
    # Gated metrics first, in the order the gate names them; the rest in the files' order.
    for metric in sorted(comparison.metrics, key=lambda m: rank.get(m.name, len(named))):
        changed = metric.change is None or abs(metric.change) > EPSILON
        shown = metric.name in rank or (comparison.base_found and changed)
        (lead if shown else rest).append(_metric_row(metric, comparison, gate))
    if not lead:  # nothing gated or changed: the table is all there is
        lead, rest = rest, []
    lines = ["### Metrics", "", *_table(headers, lead)]
    if rest:
        unchanged = f", unchanged vs {_code(base.ref)}" if comparison.base_found and base else ""
        lines += ["", f"<details><summary>{len(rest)} more metrics{unchanged}</summary>", ""]
        lines += [*_table(headers, rest), "", "</details>"]
    if base and not comparison.base_found:
        lines += ["", f"{_code(base.ref)} has no metrics: first run, nothing to compare with."]
    if champion is None:
        lines += ["", f"No champion: {comparison.champion_missing}."]
    return "\n".join(lines)


def _metric_row(metric: Metric, comparison: Comparison, gate: GateSettings) -> list[str]:
    higher = gate.higher_is_better(metric.name)
    row = [_code(metric.name), fmt(metric.value)]
    if comparison.base:
        if metric.change is not None:
            change = describe_change(metric.change, higher)
        elif metric.value is None:
            change = "removed"
        else:
            change = "new" if comparison.base_found else "—"
        row += [fmt(metric.base), change]
    if comparison.champion:
        other = comparison.champion.metrics.get(metric.name)
        both = metric.value is not None and other is not None
        row += [fmt(other), describe_change(metric.value - other, higher) if both else "—"]
    return row


def _params_section(params: list[ParamChange], base: Base) -> str:
    title = f"### Params changed vs {_code(base.ref)}"
    if not params:
        return f"{title}\n\nNone."
    rows = [[_code(p.name), _value(p.old), _value(p.new)] for p in params]
    return "\n".join([title, "", *_table(["param", _code(base.ref), "this branch"], rows)])


def _plots_section(plots: list[Plot], errors: list[str], report_dir: Path) -> str:
    lines = ["### Plots"]
    for plot in plots:
        links = [
            f"![{_alt(label)}]({path.relative_to(report_dir).as_posix()})"
            for label, path in plot.images
        ]
        lines += ["", f"**{plot.title}**", ""]
        if len(links) == 1:
            lines.append(links[0])
        else:
            lines += _table([_code(label) for label, _ in plot.images], [links])
    if not plots:
        lines += ["", "No plots defined in `dvc.yaml`."]
    if errors:
        lines += ["", *(f"- plot error: {error}" for error in errors)]
    return "\n".join(lines)


def _stages_section(stages: list[StageChange], base: Base) -> str:
    rows = [
        [_code(s.stage), STATUS_WORDS[s.status], "; ".join(s.reasons) or _why_not(s.status, base)]
        for s in stages
    ]
    title = f"### Pipeline stages vs {_code(base.ref)} (from `dvc.lock`)"
    if not rows:
        return f"{title}\n\nNo `dvc.lock` in the workspace: run `dvc repro`."
    return "\n".join([title, "", *_table(["stage", "status", "why"], rows)])


def _why_not(status: str, base: Base) -> str:
    if status == "reused":
        return f"deps, params and command as in {_code(base.ref)}"
    return "not in the workspace's `dvc.lock`"


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(map(_cell, headers)) + " |", "|" + "---|" * len(headers)]
    return lines + ["| " + " | ".join(map(_cell, row)) + " |" for row in rows]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    """`text` as inline code; backticks in it (a branch name, say) cannot close the span."""
    return "`" + text.replace("`", "'") + "`"


def _alt(text: str) -> str:
    """`text` as an image's alt text: brackets in it (a branch name, say) cannot end it."""
    return re.sub(r"[\[\]\\]", "", text)


def _value(value: object) -> str:
    return "—" if value is None else _code(str(value))
