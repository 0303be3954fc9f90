"""The `branchflow` command line: a thin layer over the toolkit's functions.

Each command imports what it needs inside its body, so `branchflow --help` stays instant.
"""

from __future__ import annotations

from typing import Any

import click

from branchflow import __version__
from branchflow.errors import BranchflowError


class _UserError(click.ClickException):
    """A `BranchflowError` shown as one `error: ...` line on stderr (exit status 1)."""

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class _Group(click.Group):
    """Turns a `BranchflowError` from any (sub)command into `_UserError`: no traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BranchflowError as exc:
            raise _UserError(str(exc)) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="branchflow")
def main() -> None:
    """GitOps CI/CD for ML pipelines: DVC DAGs, branch-aware MLflow runs, PR reports."""


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
