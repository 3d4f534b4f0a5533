"""ad-runs: the run registry (every ad-export, ad-calibrate, ad-eval, ad-bench) as tables."""

from __future__ import annotations

from typing import Any

import click

from .common import one_line_errors


def record_run(registry: str | None, kind: str, artifact: str | None = None, **fields: Any) -> int | None:
    """Record a run; a registry that cannot be written only warns (the run's own result is already out)."""
    from ..artifact import Artifact
    from ..errors import AnomedgeError
    from ..registry_db import RunRegistry

    try:
        loaded = Artifact.load(artifact, verify=False) if artifact else None
        if loaded is not None:  # the detector of every run, for ad-runs list
            fields["params"] = {"detector": loaded.metadata.detector, **(fields.get("params") or {})}
        return RunRegistry(registry).record(kind, artifact=str(artifact) if artifact else None,
                                            artifact_hash=loaded.sha256 if loaded else None, **fields)
    except AnomedgeError as exc:
        click.echo(f"warning: run not recorded: {exc}", err=True)
        return None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--registry", type=click.Path(dir_okay=False), default=None,
              help="Registry database (default: $ANOMEDGE_REGISTRY or ~/.local/share/anomedge/runs.sqlite).")
@click.pass_context
def main(ctx, registry):
    """List, show and compare recorded runs."""
    ctx.obj = registry


@main.command("list")
@click.option("--kind", type=click.Choice(["export", "calibrate", "eval", "bench"]), default=None)
@click.option("--limit", default=30, show_default=True)
@click.pass_obj
@one_line_errors
def list_runs(registry, kind, limit):
    from ..registry_db import RunRegistry, format_table

    from ..registry_db import summary_row

    rows = RunRegistry(registry).list(kind=kind, limit=limit)
    if not rows:
        click.echo("no runs recorded")
        return
    table = [summary_row(r) for r in rows]
    click.echo(format_table(table, list(table[0])))


@main.command("show")
@click.argument("run_id", type=int)
@click.pass_obj
@one_line_errors
def show_run(registry, run_id):
    from ..registry_db import RunRegistry, flatten

    run = RunRegistry(registry).get(run_id)
    for key, value in flatten(run).items():
        click.echo(f"{key:40s} {value}")


@main.command("compare")
@click.argument("a", type=int)
@click.argument("b", type=int)
@click.pass_obj
@one_line_errors
def compare_runs(registry, a, b):
    from ..registry_db import RunRegistry, format_table

    rows = [{"key": k, f"run {a}": x, f"run {b}": y} for k, x, y in RunRegistry(registry).compare(a, b)]
    click.echo(format_table(rows, ["key", f"run {a}", f"run {b}"]))
