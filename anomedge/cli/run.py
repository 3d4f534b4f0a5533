"""ad-run: score frames from a source with an artifact, torch-free; one decision record per frame."""

from __future__ import annotations

import click

from .common import one_line_errors


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("artifact", type=click.Path())
@click.option("--source", required=True, help="Folder, glob or .txt list of images.")
@click.option("--backend", default="onnxruntime", show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8", "bf16"]), default=None,
              help="Model variant (fp16 / int8 made by ad-quantize) or OpenVINO inference precision (fp32 / bf16 / fp16).")
@click.option("--placement", type=click.Choice(["host", "graph"]), default=None,
              help="Scoring on the host (fused kernel) or inside the graph (default: as recorded in the artifact).")
@click.option("--allow-fallback", is_flag=True, help="Accept onnxruntime's CPU fallback when a GPU provider fails to load.")
@click.option("--threads", type=int, default=None, help="Intra-op threads (default: all cores).")
@click.option("--threshold", type=float, default=None, help="Override the image threshold from metadata.")
@click.option("--knn-kernel", type=click.Choice(["numpy", "onnxruntime"]), default=None,
              help="Override the host kNN kernel recorded in the artifact (raced at export).")
@click.option("--jsonl", type=click.Path(dir_okay=False), default=None, help="Append decision records here.")
@click.option("--quiet", is_flag=True, help="Print only the summary line.")
@one_line_errors
def main(artifact, source, backend, device, precision, placement, allow_fallback, threads, threshold, knn_kernel, jsonl, quiet):
    """Inspect every frame of SOURCE with ARTIFACT; print OK/NG per frame and a summary."""
    import json

    from ..artifact import Artifact
    from ..runtime.pipeline import Inspector
    from ..runtime.runner import run
    from ..runtime.sinks import JsonlSink
    from ..runtime.sources import FolderSource

    loaded = Artifact.load(artifact)
    options = {k: v for k, v in (("precision", precision), ("allow_fallback", allow_fallback or None)) if v}
    frames = FolderSource(source)
    sinks = []
    sink = JsonlSink(jsonl) if jsonl else None
    if sink:
        sinks.append(sink.write)
    if not quiet:
        sinks.append(lambda record: click.echo(json.dumps(record)))
    with Inspector(loaded, backend, device, threshold=threshold, threads=threads, knn_kernel=knn_kernel,
                   placement=placement, **options) as inspector:
        if inspector.threshold is None:
            raise click.UsageError("the artifact has no image threshold: run ad-calibrate or pass --threshold")
        try:
            summary = run(inspector, frames, sinks)
        finally:
            if sink:
                sink.close()
    click.echo(summary.line(), err=not quiet)
