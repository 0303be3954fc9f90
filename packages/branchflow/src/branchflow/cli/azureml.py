"""`branchflow azureml ...`: compile dvc.yaml into Azure ML YAML, check it, submit it."""

from __future__ import annotations

import os
from pathlib import Path

import click

from branchflow.azureml import DEFAULT_OUT
from branchflow.cli.generated import check_generated, write_generated
from branchflow.cli.root import here
from branchflow.errors import EXIT_TOOL, EXIT_VERDICT, BranchflowError

OUT_HELP = "Folder of the generated YAML, relative to the repository root."
PIPELINE = click.option(
    "--pipeline",
    "pipeline_name",
    help="The pipeline (a dvc.yaml); default: the only one, else training.",
)
SET_PARAM = click.option(
    "-S",
    "--set-param",
    "params",
    multiple=True,
    metavar="[FILE:]KEY=VALUE",
    help="Set a param first, as `dvc exp run -S` does (a dev build's full data); the params "
    "file and the compiled files are rewritten to match.",
)


@click.group("azureml")
def azureml() -> None:
    """Run the DVC pipeline on Azure ML: compile dvc.yaml, check it, submit it."""


@azureml.command("compile")
@click.option("--out", default=DEFAULT_OUT, show_default=True, help=OUT_HELP)
@click.option(
    "--check",
    is_flag=True,
    help=f"Write nothing; show a diff and exit {EXIT_VERDICT} if the files differ from a fresh "
    "compile.",
)
@click.pass_context
def compile_command(ctx: click.Context, out: str, check: bool) -> None:
    """Write a component per DVC stage, the pipeline job, its environment, data assets and
    computes, then build each stage's code snapshot and validate it all offline with the
    Azure ML SDK."""
    from branchflow.azureml.compile import compile_project
    from branchflow.azureml.validate import validate

    root = here()
    _check_out(out)
    compiled = compile_project(root, out)
    planned = compiled.plan(root, out)
    if check:
        differ = f"{out} is out of date with dvc.yaml"
        check_generated(ctx, planned, root, differ, "azureml compile")
        validate(root, out, compiled.dag)
        click.echo(f"{out} is up to date and valid")
        return
    write_generated(planned, root)
    validate(root, out, compiled.dag)
    click.echo(f"{out}: {len(compiled.dag.steps)} stages, valid")


@azureml.command("submit")
@click.option("--out", default=DEFAULT_OUT, show_default=True, help=OUT_HELP)
@click.option("--wait", is_flag=True, help=f"Follow the job; exit {EXIT_TOOL} unless it completes.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=7200,
    show_default=True,
    help="Seconds --wait waits before it cancels the job and fails.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the job as YAML, and on stderr what would be created; contact nothing.",
)
@PIPELINE
@SET_PARAM
def submit_command(
    out: str,
    wait: bool,
    timeout: float,
    dry_run: bool,
    pipeline_name: str | None,
    params: tuple[str, ...],
) -> None:
    """Submit the compiled pipeline with this branch's experiment, display name and tags,
    after creating the computes, data assets and environment it needs that are missing."""
    from branchflow.azureml.submit import prepare, submit, workspace

    root = here()
    _check_out(out)
    ids = None if dry_run else workspace(os.environ)
    submission = prepare(root, out, os.environ, pipeline_name, params)
    if ids is None:
        click.echo(submission.text, nl=False)
        for line in submission.plan():
            click.echo(line, err=True)
        return
    submit(root, submission, ids, wait=wait, timeout=timeout, log=click.echo)


@azureml.command("plan")
@click.option("--out", default=DEFAULT_OUT, show_default=True, help=OUT_HELP)
@PIPELINE
@SET_PARAM
def plan_command(out: str, pipeline_name: str | None, params: tuple[str, ...]) -> None:
    """List each node Azure ML would reuse or rerun if this tree were submitted, and why,
    against the last completed job of this branch's pipeline in the workspace."""
    from branchflow.azureml.submit import plan_submission, prepare, workspace

    root = here()
    _check_out(out)
    ids = workspace(os.environ, "compare with")
    submission = prepare(root, out, os.environ, pipeline_name, params)
    for verdict in plan_submission(submission, ids):
        click.echo(verdict.line())


def _check_out(out: str) -> None:
    if Path(out).is_absolute() or ".." in Path(out).parts:
        raise BranchflowError(f"--out {out}: give a folder inside the repository, relative")
