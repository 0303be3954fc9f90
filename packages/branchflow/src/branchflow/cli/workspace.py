"""`branchflow context`, `check` and `init`: the workspace, its stages and its generated CI."""

from __future__ import annotations

import click

from branchflow.cli.generated import check_generated, write_generated
from branchflow.cli.root import here
from branchflow.errors import EXIT_OK, EXIT_VERDICT


@click.command("context")
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

    from branchflow.settings import load_settings
    from branchflow.workspace.context import as_dict, env_vars, resolve_context, write_github_files
    from branchflow.workspace.naming import names_for

    root = here()
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


@click.command("check")
@click.pass_context
def check_command(ctx: click.Context) -> None:
    """List the local Python modules each DVC stage imports but does not declare in `deps`,
    or imports from a folder only a PYTHONPATH set elsewhere provides; exit 1 when there are
    any."""
    from branchflow.workspace.imports import check_imports

    stages = check_imports(here())
    failed = [stage for stage in stages if stage.failed]
    for stage in failed:
        for line in stage.lines():
            click.echo(line)
    if not failed:
        click.echo(f"all {len(stages)} stages declare their local imports")
    ctx.exit(EXIT_VERDICT if failed else EXIT_OK)


@click.command("init")
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
    from branchflow.ci.init import plan

    root = here()
    planned = plan(root)
    for path in planned.kept:
        click.echo(
            f"kept {path}: branchflow init did not write it, so it leaves it alone; delete it "
            "and rerun to have init write it"
        )
    if check:
        differ = "the generated files differ from [tool.branchflow]"
        check_generated(ctx, planned, root, differ, "init")
        click.echo(f"all {len(planned.files)} files match [tool.branchflow]")
    elif not write_generated(planned, root):
        click.echo("nothing to change")
