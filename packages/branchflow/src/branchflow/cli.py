"""The `branchflow` command line: a thin layer over the toolkit's functions.

Each command imports what it needs inside its body, so `branchflow --help` stays instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from branchflow import __version__
from branchflow.azureml.cli import azureml
from branchflow.errors import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TOOL,
    EXIT_USAGE,
    EXIT_VERDICT,
    BranchflowError,
)

EXIT_CODES_HELP = f"""\b
Exit status:
  {EXIT_OK}    passed
  {EXIT_VERDICT}    a verdict said no: gate, check, drift --fail-on-drift,
       azureml compile --check
  {EXIT_USAGE}    usage error: unknown option, bad argument
  {EXIT_TOOL}    tool error: bad config, missing file, unreachable server,
       DVC failure, or a bug (then with a traceback)
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C)
"""


class _UserError(click.ClickException):
    """A `BranchflowError` shown as one `error: ...` line on stderr, exit status `EXIT_TOOL`."""

    exit_code = EXIT_TOOL

    def show(self, file: Any = None) -> None:
        lines = [line.strip() for line in self.format_message().splitlines()]
        click.echo(f"error: {' '.join(line for line in lines if line)}", err=True)


class _Group(click.Group):
    """The one place where failures get their exit codes (see `branchflow.errors`).

    A `BranchflowError` from any (sub)command becomes `_UserError`: one line, no traceback.
    Verdicts (`ctx.exit(EXIT_VERDICT)`) and click's usage errors pass through unchanged. An
    unexpected exception is a bug: its traceback, then one `error:` line, exit `EXIT_TOOL`, so
    that it is never taken for a verdict.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BranchflowError as exc:
            raise _UserError(str(exc)) from None
        except (click.exceptions.Exit, click.ClickException):
            raise  # they carry their own exit codes
        except (click.Abort, KeyboardInterrupt, EOFError):
            click.echo(err=True)  # closes the terminal's ^C echo
            click.echo("Aborted!", err=True)
            raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
        except SystemExit as exc:  # a library's sys.exit(): its status would pass for a verdict
            if exc.code in (None, EXIT_OK):
                raise
            raise _UserError(f"stopped by an unexpected sys.exit({exc.code!r})") from None
        except Exception as exc:
            import traceback

            click.echo(traceback.format_exc(), err=True, nl=False)
            raise _UserError(
                f"unexpected {type(exc).__name__} (a bug in branchflow {__version__}); "
                "please report it with the traceback above"
            ) from None


@click.group(
    cls=_Group,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=EXIT_CODES_HELP,
)
@click.version_option(__version__, prog_name="branchflow")
def main() -> None:
    """GitOps CI/CD for ML pipelines: DVC DAGs, branch-aware MLflow runs, PR reports."""


main.add_command(azureml)


@main.command("context")
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["json", "shell", "github"]),
    default="json",
    show_default=True,
    help="json: one object; shell: `export` lines for eval; "
    "github: append to $GITHUB_ENV (BRANCHFLOW_*) and $GITHUB_OUTPUT (plain field names).",
)
@click.option(
    "--pipeline-type", default="training", show_default=True, help="Pipeline type for the names."
)
def context_command(output_format: str, pipeline_type: str) -> None:
    """Show the branch, commit and CI run, and the MLflow/Azure ML names derived from them."""
    import json
    import os
    import shlex
    from pathlib import Path

    from branchflow.config import load_settings
    from branchflow.context import (
        as_dict,
        env_vars,
        names_for,
        resolve_context,
        write_github_files,
    )

    root = Path.cwd()
    settings = load_settings(root)
    context = resolve_context(root, os.environ, settings)
    names = names_for(context, settings, pipeline_type)
    if output_format == "json":
        click.echo(json.dumps(as_dict(context, names), indent=2))
    elif output_format == "shell":
        for key, value in env_vars(context, names).items():
            click.echo(f"export {key}={shlex.quote(value)}")
    else:
        write_github_files(context, names, os.environ)


_BASE_HELP = (
    "Git ref to compare with, e.g. origin/main. Default: origin/$GITHUB_BASE_REF in a GitHub "
    "pull request, else none (rules against the base are skipped)."
)
_PIPELINE_HELP = (
    "The pipeline (a dvc.yaml, see docs/config.md) whose metrics to judge; default: the one "
    "that writes the registered model."
)
_FETCH_HELP = "If this (shallow) clone lacks the base, fetch it: git fetch --depth=1."


@main.command("report")
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
def report_command(base_ref: str | None, out: Path, fetch: bool, pipeline: str | None) -> None:
    """Write the PR report: gate verdict, metrics vs base and champion, params, plots, stages."""
    from branchflow.compare import default_base
    from branchflow.report import write_report

    verdict = write_report(
        Path.cwd(), out, base_ref or default_base(), fetch=fetch, pipeline=pipeline
    )
    click.echo(f"wrote {out}: gate {'passed' if verdict.passed else 'failed'}")


@main.command("gate")
@click.option("--base", "base_ref", help=_BASE_HELP)
@click.option("--fetch", is_flag=True, help=_FETCH_HELP)
@click.option("--pipeline", help=_PIPELINE_HELP)
@click.pass_context
def gate_command(
    ctx: click.Context, base_ref: str | None, fetch: bool, pipeline: str | None
) -> None:
    """Check the metrics against [tool.branchflow.gate]; exit 1 listing each failed rule."""
    from branchflow.compare import default_base
    from branchflow.gate import run_gate

    verdict = run_gate(Path.cwd(), base_ref or default_base(), fetch=fetch, pipeline=pipeline)
    for line in verdict.lines():
        click.echo(line)
    ctx.exit(EXIT_OK if verdict.passed else EXIT_VERDICT)


@main.command("check")
@click.pass_context
def check_command(ctx: click.Context) -> None:
    """List the local Python modules each DVC stage imports but does not declare in `deps`;
    exit 1 when there are any."""
    from branchflow.imports import check_imports

    stages = check_imports(Path.cwd())
    failed = [stage for stage in stages if stage.undeclared]
    for stage in failed:
        click.echo(stage.line())
    if not failed:
        click.echo(f"all {len(stages)} stages declare their local imports")
    ctx.exit(EXIT_VERDICT if failed else EXIT_OK)


@main.command("init")
@click.option(
    "--check",
    is_flag=True,
    help=f"Write nothing; show a diff and exit {EXIT_VERDICT} if the files differ from what the "
    "config gives.",
)
@click.pass_context
def init_command(ctx: click.Context, check: bool) -> None:
    """Set this DVC project up: detect how it installs, lints and tests (into
    [tool.branchflow.ci], on the first run), write .github/ and the ignore entries."""
    from branchflow.ci.init import apply, plan

    root = Path.cwd()
    planned = plan(root)
    if check:
        diff = planned.diff(root)
        if diff:
            click.echo(diff, nl=False)
            click.echo(  # a verdict on the change, like `azureml compile --check`'s
                "error: the generated files differ from [tool.branchflow]; run `branchflow "
                "init` and commit",
                err=True,
            )
            ctx.exit(EXIT_VERDICT)
        click.echo(f"all {len(planned.files)} files match [tool.branchflow]")
        return
    changed = apply(root, planned)
    for path in changed:
        click.echo(f"{'removed' if path in planned.stale else 'wrote'} {path}")
    if not changed:
        click.echo("nothing to change")


_FORMAT = click.option(
    "--format",
    "output_format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="text for people, json for machines.",
)
_REASON = click.option("--reason", default="", help="Why; recorded in the history.")


@main.command("register")
@_FORMAT
def register_command(output_format: str) -> None:
    """Log this branch's DVC state to MLflow and register its model under alias `candidate`."""
    import dataclasses
    import json

    from branchflow.registry import describe, register

    registration = register(Path.cwd())
    if output_format == "json":
        click.echo(json.dumps(dataclasses.asdict(registration), indent=2))
    else:
        click.echo(describe(registration))


@main.command("promote")
@click.argument("model_uri")
@_REASON
def promote_command(model_uri: str, reason: str) -> None:
    """Make MODEL_URI the production champion.

    MODEL_URI is models:/<name>@<alias> or models:/<name>/<version>. The version is copied
    into the production model and the alias `champion` moves to the copy.
    """
    from branchflow.registry import describe, promote

    click.echo(describe(promote(Path.cwd(), model_uri, reason)))


@main.command("rollback")
@_REASON
def rollback_command(reason: str) -> None:
    """Move `champion` back to the version that held it before the latest promotion."""
    from branchflow.registry import describe, rollback

    click.echo(describe(rollback(Path.cwd(), reason)))


@main.command("history")
@_FORMAT
def history_command(output_format: str) -> None:
    """List every move of the production model's `champion` alias, oldest first."""
    import dataclasses
    import json

    from branchflow.registry import history, history_lines

    moves = history(Path.cwd())
    if output_format == "json":
        click.echo(json.dumps([dataclasses.asdict(move) for move in moves], indent=2))
    else:
        click.echo("\n".join(history_lines(moves)) or "no champion moves recorded")


@main.command("pin")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("pipelines/scoring/model.json"),
    show_default=True,
    help="The pin file a pipeline depends on.",
)
def pin_command(out: Path) -> None:
    """Pin the production champion (name, version, sha256) into OUT; it changes only when
    the champion does."""
    from branchflow.pin import pin

    found, changed = pin(Path.cwd(), out)
    state = "pinned" if changed else "already pins"
    click.echo(f"{out}: {state} models:/{found.name}/{found.version} (sha256 {found.sha256[:12]})")


@main.command("prune")
@click.option("--branch", required=True, help="The merged or deleted branch, as git names it.")
@click.option("--dry-run", is_flag=True, help="List what would be removed; remove nothing.")
def prune_command(branch: str, dry_run: bool) -> None:
    """Remove a gone branch's model versions and experiments, keeping any still in use."""
    from branchflow.registry import prune, prune_lines

    click.echo("\n".join(prune_lines(prune(Path.cwd(), branch, dry_run))))


_STATS = click.Path(dir_okay=False, path_type=Path)


def _finite_share(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """A relative limit: a finite number >= 0 (click's FloatRange lets NaN and inf through)."""
    import math

    if value is not None and not (math.isfinite(value) and value >= 0):
        raise click.BadParameter(f"{value} is not a finite number >= 0 (0.25 is 25 %)")
    return value


@main.command("drift")
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

    drift = check_drift(Path.cwd(), reference, current, threshold)
    click.echo("\n".join(drift.lines()))
    if write_github_output(drift):
        click.echo(f"drift={'true' if drift.drifted else 'false'} written to $GITHUB_OUTPUT")
    ctx.exit(EXIT_VERDICT if fail_on_drift and drift.drifted else EXIT_OK)
