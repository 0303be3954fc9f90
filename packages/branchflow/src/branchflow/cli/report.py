"""`branchflow report`, `gate` and `drift`: the pull request's report, its verdict, data drift."""

from __future__ import annotations

from pathlib import Path

import click

from branchflow.cli.root import here
from branchflow.errors import EXIT_OK, EXIT_VERDICT, docs_url

_BASE_HELP = (
    "Git ref to compare with, e.g. origin/main. Default: origin/$GITHUB_BASE_REF in a GitHub "
    "pull request, else none (rules against the base are skipped)."
)
_PIPELINE_HELP = (
    f"The pipeline (a dvc.yaml, see {docs_url('config.md')}) whose metrics to judge; default: "
    "the one that writes the registered model."
)
_FETCH_HELP = "If this (shallow) clone lacks the base, fetch it: git fetch --depth=1."


@click.command("report")
@click.option("--base", "base_ref", help=_BASE_HELP)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("report.md"),
    show_default=True,
    help="Markdown file to write; beside it go its data, <stem>.json (report.json), and its "
    "PNGs, in <stem>_files/ (report_files/).",
)
@click.option("--fetch", is_flag=True, help=_FETCH_HELP)
@click.option("--pipeline", help=_PIPELINE_HELP)
@click.option(
    "--repro-log",
    type=click.Path(dir_okay=False, path_type=Path),
    help="What this build's `dvc repro` printed: the stage table then says which changed "
    "stages ran, which DVC restored from its run-cache, and which neither.",
)
def report_command(
    base_ref: str | None, out: Path, fetch: bool, pipeline: str | None, repro_log: Path | None
) -> None:
    """Write the PR report: gate verdict, metrics vs base and champion, params, plots, stages."""
    from branchflow.report.compare import default_base
    from branchflow.report.document import write_report

    base = base_ref or default_base()
    verdict = write_report(here(), out, base, fetch=fetch, pipeline=pipeline, repro_log=repro_log)
    click.echo(f"wrote {out}: gate {'passed' if verdict.passed else 'failed'}")


@click.command("gate")
@click.option("--base", "base_ref", help=_BASE_HELP)
@click.option("--fetch", is_flag=True, help=_FETCH_HELP)
@click.option("--pipeline", help=_PIPELINE_HELP)
@click.pass_context
def gate_command(
    ctx: click.Context, base_ref: str | None, fetch: bool, pipeline: str | None
) -> None:
    """Check the metrics against [tool.branchflow.gate]; exit 1 listing each failed rule."""
    from branchflow.report.compare import default_base
    from branchflow.report.gate import run_gate

    verdict = run_gate(here(), base_ref or default_base(), fetch=fetch, pipeline=pipeline)
    for line in verdict.lines():
        click.echo(line)
    ctx.exit(EXIT_OK if verdict.passed else EXIT_VERDICT)


_STATS = click.Path(dir_okay=False, path_type=Path)


def _finite_share(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """A relative limit: a finite number >= 0 (click's FloatRange lets NaN and inf through)."""
    import math

    if value is not None and not (math.isfinite(value) and value >= 0):
        raise click.BadParameter(f"{value} is not a finite number >= 0 (0.25 is 25 %)")
    return value


@click.command("drift")
@click.option(
    "--reference",
    required=True,
    type=_STATS,
    help="Statistics (a JSON object, nested allowed) of the data the champion was trained on.",
)
@click.option("--current", required=True, type=_STATS, help="Statistics of the newest data.")
@click.option(
    "--threshold",
    type=float,
    callback=_finite_share,
    help="Default relative limit (0.25 is 25 %), instead of [tool.branchflow.drift] threshold.",
)
@click.option("--fail-on-drift", is_flag=True, help="Exit 1 when drift is found.")
@click.pass_context
def drift_command(
    ctx: click.Context,
    reference: Path,
    current: Path,
    threshold: float | None,
    fail_on_drift: bool,
) -> None:
    """Compare two JSON files of data statistics with [tool.branchflow.drift]; write
    drift=true|false to $GITHUB_OUTPUT when it is set."""
    from branchflow.drift import check_drift, write_github_output

    drift = check_drift(here(), reference, current, threshold)
    click.echo("\n".join(drift.lines()))
    if write_github_output(drift):
        click.echo(f"drift={'true' if drift.drifted else 'false'} written to $GITHUB_OUTPUT")
    ctx.exit(EXIT_VERDICT if fail_on_drift and drift.drifted else EXIT_OK)
