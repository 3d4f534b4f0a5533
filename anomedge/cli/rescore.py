"""ad-rescore: re-score an archive of saved frames with an artifact on Ray Data; ad-run's decision records."""

from __future__ import annotations

import click

from .common import one_line_errors


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("archive")
@click.option("--artifact", required=True, type=click.Path(), help="Artifact folder to score with.")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="Records: FILE.jsonl, .csv or .parquet.")
@click.option("--address", default=None, help="Ray cluster: 'auto' or ray://HOST:10001 (default: a local cluster).")
@click.option("--resume", is_flag=True, help="Skip the files already in --out and append the rest.")
@click.option("--actors", type=int, default=2, show_default=True, help="Scoring actors (one Inspector each).")
@click.option("--batch-size", type=int, default=16, show_default=True, help="Files per map_batches call.")
@click.option("--threads", type=int, default=1, show_default=True, help="onnxruntime threads per actor.")
@click.option("--backend", default="onnxruntime", show_default=True, help="Runtime backend inside the actors.")
@click.option("--threshold", type=float, default=None, help="Override the image threshold from metadata.")
@click.option("--quiet", is_flag=True, help="Print only the summary line.")
@one_line_errors
def main(archive, artifact, out, address, resume, actors, batch_size, threads, backend, threshold, quiet):
    """Score every image of ARCHIVE (folder, glob or .txt list) with --artifact; one record per file in --out."""
    import json
    import time

    from ..serving.rescore import rescore

    start = time.perf_counter()
    summary = rescore(archive, artifact, out, address=address, resume=resume, batch_size=batch_size, actors=actors,
                      backend=backend, threshold=threshold, threads=threads,
                      on_record=None if quiet else (lambda record: click.echo(json.dumps(record))), progress=not quiet)
    seconds = time.perf_counter() - start
    click.echo(f"{summary.frames} new records in {seconds:.1f} s ({summary.frames / seconds if seconds else 0:.1f} frames/s): "
               f"{summary.frames - summary.ng - summary.errors} OK, {summary.ng} NG, {summary.errors} errors → {out}",
               err=not quiet)
