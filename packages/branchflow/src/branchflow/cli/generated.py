"""How `init` and `azureml compile` report their generated files: written, or checked."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from branchflow.errors import EXIT_VERDICT

if TYPE_CHECKING:
    from branchflow.generated import Plan


def check_generated(ctx: click.Context, planned: Plan, differ: str, command: str) -> None:
    """`--check`: exit `EXIT_VERDICT` with the diff and one line (a verdict on the change, like
    `gate`'s, not a tool error) when the files on disk differ from the plan."""
    from pathlib import Path

    diff = planned.diff(Path.cwd())
    if diff:
        click.echo(diff, nl=False)
        click.echo(f"error: {differ}; run `branchflow {command}` and commit", err=True)
        ctx.exit(EXIT_VERDICT)


def write_generated(planned: Plan) -> list[str]:
    """Apply the plan in the working directory, one line per file; return what changed."""
    from pathlib import Path

    changed = planned.apply(Path.cwd())
    for path in changed:
        click.echo(f"{'removed' if path in planned.stale else 'wrote'} {path}")
    return changed
