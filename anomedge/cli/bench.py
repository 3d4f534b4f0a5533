"""ad-bench: latency and parity of every backend against the PyTorch reference."""

from __future__ import annotations

import json

import click

from ..runtime.precisions import bench_entries
from .common import format_table, one_line_errors


# "all": every backend:precision of the precision table; unavailable ones are listed with the reason.
ALL_ENTRIES = bench_entries()


def bench_table(reports) -> str:
    rows = [r.row() for r in reports]
    columns = list(dict.fromkeys(k for row in rows for k in row))
    return format_table(rows, columns)


def load_frames(data: str, limit: int | None):
    """Test images of a data set spec, or the images of a folder/glob/list → (paths, frames)."""
    from ..datasets import load_dataset
    from ..datasets.folder import list_images
    from ..errors import InputError
    from ..runtime.preprocess import read_image

    try:
        split = load_dataset(data)
        paths = list(split.test) or list(split.train)
    except InputError:
        paths = list_images(data)
    paths = paths[:limit] if limit else paths
    return paths, [read_image(p) for p in paths]


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("artifact", type=click.Path())
@click.option("--data", required=True, help="Images to measure on: a data set spec (test split) or a folder.")
@click.option("--backends", default="onnxruntime", show_default=True, help="Comma list, or 'all'.")
@click.option("--device", default="auto", show_default=True, help="onnxruntime cpu|cuda|tensorrt; OpenVINO CPU|GPU|NPU|AUTO.")
@click.option("--placements", default="host", show_default=True, help="Scoring placements to race: host,graph.")
@click.option("--allow-fallback", is_flag=True, help="Accept onnxruntime's CPU fallback when a GPU provider fails.")
@click.option("--runs", default=100, show_default=True, help="Timed frames per backend (batch 1), after warm-up.")
@click.option("--warmup", default=10, show_default=True)
@click.option("--threads", default=2, show_default=True)
@click.option("--limit", type=int, default=None, help="Use only the first N images for parity.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Also write the results as JSON.")
@click.option("--registry", type=click.Path(dir_okay=False), default=None, help="Run registry database.")
@one_line_errors
def main(artifact, data, backends, device, placements, allow_fallback, runs, warmup, threads, limit, json_path, registry):
    """Measure ARTIFACT on each backend: per-stage p50, end-to-end p50/p99, FPS, and parity vs torch."""
    from ..artifact import Artifact
    from ..benchmark import artifact_kernel_race, bench_backends

    loaded = Artifact.load(artifact)
    names = ALL_ENTRIES if backends == "all" else [b.strip() for b in backends.split(",")]
    _, frames = load_frames(data, limit)
    options = {"device": device, **({"allow_fallback": True} if allow_fallback else {})}
    reports = bench_backends(loaded, frames, names, runs=runs, warmup=warmup, threads=threads,
                             placements=[p.strip() for p in placements.split(",")], options=options)
    click.echo(f"{loaded.root} on {len(frames)} images, batch 1, {threads} threads, {runs} timed runs")
    click.echo(bench_table(reports))
    race = artifact_kernel_race(loaded, frames[0])
    if race:
        click.echo("\nkNN search, one frame, k=1 (median of 20): fused kernel vs faiss IndexFlatL2")
        click.echo(format_table([race], list(race)))
    if json_path:
        with open(json_path, "w") as handle:
            json.dump([r.row() for r in reports], handle, indent=2)
    from .runs import record_run

    record_run(registry, "bench", artifact, params={"data": data, "backends": names, "runs": runs, "threads": threads},
               latency={r.backend: r.row() for r in reports}, metrics=race or {})
