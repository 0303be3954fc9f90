"""How `init` and `azureml compile` report their generated files: written, or checked."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from branchflow.errors import EXIT_VERDICT

if TYPE_CHECKING:
    from branchflow.generated import Plan


def check_generated(
    ctx: click.Context, planned: Plan, root: Path, differ: str, command: str
) -> None:
    """`--check`: exit `EXIT_VERDICT` with the diff and one line (a verdict on the change, like
    `gate`'s, not a tool error) when the files under `root` differ from the plan."""
    diff = planned.diff(root)
    if diff:
        click.echo(diff, nl=False)
        click.echo(f"error: {differ}; run `branchflow {command}` and commit", err=True)
        ctx.exit(EXIT_VERDICT)


def write_generated(planned: Plan, root: Path) -> list[str]:
    """Apply the plan under `root`, one line per file; return what changed."""
    changed = planned.apply(root)
    for path in changed:
        click.echo(f"{'removed' if path in planned.stale else 'wrote'} {path}")
    return changed
