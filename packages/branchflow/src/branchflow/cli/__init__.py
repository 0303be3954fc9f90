"""The `branchflow` command line: a thin layer over the toolkit's functions.

Each command imports what it needs inside its body, so `branchflow --help` stays instant.
"""

from __future__ import annotations

from typing import Any

import click

from branchflow import __version__
from branchflow.cli.azureml import azureml
from branchflow.cli.registry import (
    history_command,
    pin_command,
    promote_command,
    prune_command,
    reconcile_command,
    register_command,
    rollback_command,
)
from branchflow.cli.report import drift_command, gate_command, report_command
from branchflow.cli.workspace import check_command, context_command, init_command
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


for command in (
    azureml,
    context_command,
    report_command,
    gate_command,
    check_command,
    init_command,
    register_command,
    promote_command,
    rollback_command,
    reconcile_command,
    history_command,
    pin_command,
    prune_command,
    drift_command,
):
    main.add_command(command)
