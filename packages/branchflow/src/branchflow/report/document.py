"""`branchflow report`: the pull-request report a reviewer decides from.

It writes the report's data as a document, `report.json` (the schema is in `render`:
the gate's verdict, where the run comes from, metrics against the base and the champion, changed
params, the judged pipeline's plots as PNG files in `report_files/`, and which stages reran and
why), then renders `report.md` from that document with `render`, the one renderer the
trusted comment jobs also use. Images use relative paths, as `cml comment update` expects.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from branchflow.errors import BranchflowError
from branchflow.files import write_atomic
from branchflow.paired import Interval
from branchflow.report.compare import (
    WORKSPACE,
    Base,
    Comparison,
    ParamChange,
    StageChange,
    changed_params,
    compare,
    data_versions,
    open_dvc,
    resolve_base,
    stage_changes,
)
from branchflow.report.gate import Verdict, evaluate, key_metric
from branchflow.report.plots import Plot, render_plots
from branchflow.report.render import SCHEMA, clean_name, clean_text, figures_dir, load, render
from branchflow.settings import GateSettings, load_settings
from branchflow.workspace.context import Context, resolve_context
from branchflow.workspace.dag import read_dag
from branchflow.workspace.naming import names_for
from branchflow.workspace.pipelines import scope


def write_report(
    root: Path,
    out: Path,
    base_ref: str | None,
    *,
    fetch: bool = False,
    env: Mapping[str, str] = os.environ,
    pipeline: str | None = None,
    repro_log: Path | None = None,
) -> Verdict:
    """Write the report of `pipeline` (default: the model's) for the workspace at `root`: its
    document to `<out stem>.json`, its PNGs to `<out stem>_files/`, and `out`, the markdown
    rendered from them. With `repro_log` (what this build's `dvc repro` printed), the stage
    table says which changed stages ran, which DVC restored from its run-cache, and which
    neither."""
    if out.suffix == ".json":
        raise BranchflowError(f"--out {out}: name the markdown file (.md); the data goes beside")
    settings = load_settings(root)
    judged = scope(root, settings, read_dag(root), pipeline)
    context = resolve_context(root, env, settings)
    base = (
        resolve_base(root, base_ref, fetch=fetch, branch=context.base_branch) if base_ref else None
    )
    labels = {WORKSPACE: f"{context.branch} (this branch)"}
    if base:
        labels[base.commit] = base.ref
    files = figures_dir(out)
    with ThreadPoolExecutor(max_workers=1) as background:
        plotting = background.submit(
            render_plots, root, base.commit if base else None, files, labels, judged.plots
        )
        with open_dvc(root) as repo:
            production = names_for(context, settings).production_model
            champion = production if judged.has_model else None
            comparison = compare(repo, base, champion, env, judged.metrics_files, judged.gate.units)
            params = changed_params(repo, base) if base else []
        plots, plot_errors = plotting.result()
    verdict = evaluate(judged.gate, comparison)
    key = key_metric(judged.gate, comparison)
    log = _read_log(repro_log) if repro_log else None
    data, base_data = data_versions(root, base, {source.dvcfile for source in judged.data})
    document = {
        "schema": SCHEMA,
        "pr": context.pr_number,
        "verdict": _verdict(verdict),
        "run": _run(context, data),
        "base": _base(base, base_data, comparison) if base else None,
        "champion": {"version": comparison.champion.version} if comparison.champion else None,
        "champion_missing": _optional_text(comparison.champion_missing),
        "key_metric": clean_name(key.name) if key else None,
        "metrics": _metrics(comparison, judged.gate, verdict),
        "params": [_param(p) for p in params] if base else None,
        "plots": [_plot(plot, files) for plot in plots],
        "plot_errors": [clean_text(error) for error in plot_errors],
        "stages": [_stage(s) for s in stage_changes(root, base, judged.lockfiles, log)]
        if base
        else None,
    }
    source = out.with_suffix(".json")
    write_atomic(source, json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    markdown = render(load(source).document, files.name, run_url=context.run_url)
    write_atomic(out, markdown)
    return verdict


def _read_log(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise BranchflowError(
            f"--repro-log {path}: {exc.strerror}; pass the file dvc repro's output went to"
        ) from None


def _verdict(verdict: Verdict) -> dict[str, Any]:
    return {
        "passed": verdict.passed,
        "checks": [{"passed": c.passed, "text": clean_text(c.text)} for c in verdict.checks],
        "notes": [clean_text(note) for note in verdict.notes],
    }


def _run(context: Context, data: str | None) -> dict[str, Any]:
    return {
        "branch": clean_name(context.branch),
        "commit": context.short_commit,
        "dirty": context.dirty,
        "type": context.run_type,
        "data": _optional_name(data),
    }


def _base(base: Base, data: str | None, comparison: Comparison) -> dict[str, Any]:
    return {
        "ref": clean_name(base.ref),
        "commit": base.commit,
        "data": _optional_name(data),
        "metrics_found": comparison.base_found,
        "metrics_missing": _optional_text(comparison.base_missing),
    }


def _metrics(comparison: Comparison, gate: GateSettings, verdict: Verdict) -> list[dict[str, Any]]:
    """Every metric, the gated ones first in the order the gate names them, with the paired
    intervals that judged its drop rules."""
    named = gate.metric_names()
    base, champion_intervals = (verdict.intervals.get(s, {}) for s in ("base", "champion"))
    rank = {name: index for index, name in enumerate(named)}
    champion = comparison.champion.metrics if comparison.champion else {}
    return [
        {
            "name": clean_name(m.name),
            "value": m.value,
            "base": m.base,
            "change": m.change,
            "champion": champion.get(m.name),
            "higher_is_better": gate.higher_is_better(m.name),
            "gated": m.name in rank,
            "vs_base": _interval(base.get(m.name), gate.higher_is_better(m.name)),
            "vs_champion": _interval(champion_intervals.get(m.name), gate.higher_is_better(m.name)),
        }
        for m in sorted(comparison.metrics, key=lambda m: rank.get(m.name, len(named)))
    ]


def _interval(interval: Interval | None, higher_is_better: bool) -> dict[str, Any] | None:
    if interval is None:
        return None
    return {
        "low": interval.low,
        "high": interval.high,
        "units": interval.units,
        "confidence": interval.confidence,
        "verdict": interval.verdict(higher_is_better),
    }


def _param(param: ParamChange) -> dict[str, Any]:
    return {
        "name": clean_name(param.name),
        "old": _optional_name(param.old),
        "new": _optional_name(param.new),
    }


def _plot(plot: Plot, files: Path) -> dict[str, Any]:
    images = [
        {"label": clean_name(label), "file": path.relative_to(files).as_posix()}
        for label, path in plot.images
    ]
    return {"title": clean_text(plot.title), "images": images}


def _stage(stage: StageChange) -> dict[str, Any]:
    return {
        "stage": clean_name(stage.stage),
        "status": stage.status,
        "reasons": [clean_text(reason) for reason in stage.reasons],
    }


def _optional_name(value: object) -> str | None:
    return None if value is None else clean_name(str(value))


def _optional_text(value: str | None) -> str | None:
    return None if value is None else clean_text(value)
