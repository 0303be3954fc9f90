"""`branchflow register`, `promote`, `rollback`, `history`, `pin` and `prune`, and the lines
they print."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from branchflow.cli.root import here

if TYPE_CHECKING:
    from branchflow.registry.champion import Move
    from branchflow.registry.prune import PrunePlan
    from branchflow.registry.register import Registration


_FORMAT = click.option(
    "--format",
    "output_format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="text for people, json for machines.",
)
_REASON = click.option("--reason", default="", help="Why; recorded in the history.")


@click.command("register")
@_FORMAT
def register_command(output_format: str) -> None:
    """Log this branch's DVC state to MLflow and register its model under alias `candidate`."""
    import dataclasses
    import json

    from branchflow.registry.register import register

    registration = register(here())
    if output_format == "json":
        click.echo(json.dumps(dataclasses.asdict(registration), indent=2))
    else:
        click.echo(describe(registration))


@click.command("promote")
@click.argument("model_uri")
@_REASON
@click.option(
    "--declare",
    is_flag=True,
    help="Production is declared in git: copy the version and write the declaration file, "
    "for a pull request; nothing moves until it is merged and reconciled.",
)
@click.option(
    "--body",
    type=click.Path(dir_okay=False, path_type=Path),
    help="With --declare: write the pull request's body (markdown) here.",
)
def promote_command(model_uri: str, reason: str, declare: bool, body: Path | None) -> None:
    """Make MODEL_URI the production champion.

    MODEL_URI is models:/<name>@<alias> or models:/<name>/<version>. The version is copied
    into the production model and the alias `champion` moves to the copy (with --declare, the
    file [tool.branchflow.production] declared names the copy instead).
    """
    if declare:
        from branchflow.files import write_atomic
        from branchflow.registry.declared import declare as declare_version

        declared = declare_version(here(), model_uri)
        if body is not None:
            write_atomic(body, declared.body)
        pin = declared.pin
        click.echo(
            f"{declared.path}: declares models:/{pin.name}/{pin.version} (copy of "
            f"{declared.source}); merge it to make it champion"
        )
        return
    from branchflow.registry.champion import promote

    click.echo(describe(promote(here(), model_uri, reason)))


@click.command("reconcile")
@click.option(
    "--restore",
    is_flag=True,
    help="Move `champion` to the declared version (production's credentials); without it, "
    "only compare (exit 1 on drift).",
)
@click.pass_context
def reconcile_command(ctx: click.Context, restore: bool) -> None:
    """Make the registry match production as declared in git ([tool.branchflow.production]).

    Exit 0 when `champion` is the declared version (or was moved there), 1 when it is not.
    """
    from branchflow.errors import EXIT_OK, EXIT_VERDICT
    from branchflow.registry.declared import reconcile

    result = reconcile(here(), restore=restore)
    pin, path = result.declared, result.path
    alias = f"{pin.name}@champion"
    if result.move is not None:
        click.echo(
            f"restored: {alias} {result.found or 'none'} -> {pin.version}, as {path} declares "
            f"at {result.move.commit[:7]}"
        )
    elif result.in_sync:
        click.echo(f"in sync: {alias} is {pin.version}, as {path} declares")
    else:
        click.echo(
            f"drift: {alias} is {result.found or 'unset'}, but {path} declares {pin.version}; "
            "`branchflow reconcile --restore` moves it back"
        )
    ctx.exit(EXIT_OK if result.in_sync else EXIT_VERDICT)


@click.command("rollback")
@_REASON
def rollback_command(reason: str) -> None:
    """Move `champion` back to the version that held it before the latest promotion."""
    from branchflow.registry.champion import rollback

    click.echo(describe(rollback(here(), reason)))


@click.command("history")
@_FORMAT
def history_command(output_format: str) -> None:
    """List every move of the production model's `champion` alias, oldest first, and, where
    production is declared in git, the declaration file's git log."""
    import dataclasses
    import json

    from branchflow.registry.champion import history
    from branchflow.registry.declared import declaration_log
    from branchflow.settings import load_settings

    moves = history(here())
    declared = load_settings(here()).production.declared
    log = declaration_log(here(), declared) if declared else []
    if output_format == "json":
        records = [dataclasses.asdict(move) for move in moves]
        click.echo(
            json.dumps(records if not declared else {"moves": records, "git": log}, indent=2)
        )
        return
    click.echo("\n".join(history_lines(moves)) or "no champion moves recorded")
    if declared:
        click.echo(f"\n{declared} in git, oldest first:")
        click.echo("\n".join(f"  {line}" for line in log) or "  no commits yet")


@click.command("pin")
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
    from branchflow.registry.pin import pin

    found, changed = pin(here(), out)
    state = "pinned" if changed else "already pins"
    click.echo(f"{out}: {state} models:/{found.name}/{found.version} (sha256 {found.sha256[:12]})")


@click.command("prune")
@click.option("--branch", required=True, help="The merged or deleted branch, as git names it.")
@click.option("--dry-run", is_flag=True, help="List what would be removed; remove nothing.")
def prune_command(branch: str, dry_run: bool) -> None:
    """Remove a gone branch's model versions and experiments, keeping any still in use."""
    from branchflow.registry.prune import prune

    click.echo("\n".join(prune_lines(prune(here(), branch, dry_run))))


def describe(result: Registration | Move) -> str:
    """One line for people about a registration or a champion move."""
    from branchflow.registry.register import CANDIDATE, Registration

    if isinstance(result, Registration):
        if result.created:
            return f"registered {result.model} version {result.version} (alias {CANDIDATE})"
        return (
            f"{result.model} version {result.version} already holds this model package "
            f"(sha256 {result.package_sha256[:12]}); alias {CANDIDATE} points to it"
        )
    if result.from_version == result.to_version:
        return f"{result.model}@{result.alias} is already version {result.to_version}; no change"
    via = f"copy of {result.source}" if result.action == "promote" else result.action
    return (
        f"{result.model}@{result.alias}: version {result.from_version or 'none'} -> "
        f"{result.to_version} ({via})"
    )


def history_lines(moves: list[Move]) -> list[str]:
    """One line per move, oldest first."""
    return [
        f"{m.when}  {m.action:<8}  {m.from_version or '-':>4} -> {m.to_version:<4}  by {m.who}"
        f"  at {m.commit[:7]}{f'  from {m.source}' if m.source else ''}"
        f"{f'  reason: {m.reason}' if m.reason else ''}"
        for m in moves
    ]


def prune_lines(plan: PrunePlan) -> list[str]:
    """What was (or would be) removed and what was kept, one line each."""
    verb = "would delete" if plan.dry_run else "deleted"
    lines = [f"{verb} model version {plan.model}/{v}" for v in plan.versions]
    lines += [f"{verb} experiment {name}" for name in plan.experiments]
    lines += [
        f"kept model version {plan.model}/{v} (aliased or promoted)" for v in plan.kept_versions
    ]
    lines += [
        f"kept experiment {name} (holds a kept version's run)" for name in plan.kept_experiments
    ]
    return lines or [f"nothing to prune for branch {plan.branch!r}"]
