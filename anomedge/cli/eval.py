"""ad-eval: evaluate an artifact on labelled data → a report folder (metrics, scores, plots, HTML)."""

from __future__ import annotations

import click

from ..runtime.precisions import ALL_PRECISIONS
from .common import one_line_errors


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("artifact", type=click.Path())
@click.option("--data", required=True, help="Labelled data: a data set spec (elpv:mono) or an MVTec-layout folder.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Report folder to write.")
@click.option("--backend", default="onnxruntime", show_default=True)
@click.option("--precision", type=click.Choice(ALL_PRECISIONS), default="fp32", show_default=True)
@click.option("--max-pixels", type=click.IntRange(min=1), default=64_000_000, show_default=True,
              help="Pixel budget per image, checked in its header before decoding; larger ones are skipped.")
@click.option("--registry", type=click.Path(dir_okay=False), default=None, help="Run registry database.")
@one_line_errors
def main(artifact, data, out, backend, precision, max_pixels, registry):
    """Score DATA's test split with ARTIFACT; write metrics.json, scores.csv, PNGs and report.html to OUT."""
    import warnings
    from pathlib import Path

    import numpy as np

    from ..artifact import Artifact
    from ..calibrate.apply import read_masks, score_paths
    from ..calibrate.report import Evaluation, write_report
    from ..runtime.pipeline import Inspector
    from .calibrate import validation_set
    from .runs import record_run

    loaded = Artifact.load(artifact)
    paths, labels, mask_paths = validation_set(data)
    extra = {} if precision == "fp32" else {"precision": precision}
    with Inspector(loaded, backend, **extra) as inspector:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            scored = score_paths(inspector, paths, max_pixels)
        for w in caught:
            click.echo(f"warning: {w.message}", err=True)
        threshold = inspector.threshold
    scored_paths = set(scored.paths)
    keep = [i for i, p in enumerate(paths) if Path(p) in scored_paths]
    masks = read_masks([mask_paths[i] for i in keep], scored.maps.shape[1:], scored.sizes) if mask_paths else None
    evaluation = Evaluation(scored.paths, np.asarray(labels)[keep], scored.scores, scored.maps, masks, threshold,
                            loaded.metadata.thresholds.get("pixel"))
    metrics = write_report(evaluation, Path(out), f"{loaded.root.name} on {data} ({backend}, {precision})",
                           {"run": {"backend": backend, "precision": precision, "skipped": len(scored.skipped)}})
    image = metrics["image"]
    line = f"AUROC {image['auroc']:.4f}, AP {image['pr_auc']:.4f}, F1-max {image['f1_max']:.4f}"
    if "f1" in image:
        line += f", F1 at threshold {image['f1']:.4f}"
    if "pixel" in metrics:
        line += f", pixel AUROC {metrics['pixel']['pixel_auroc']:.4f}, AUPRO {metrics['pixel']['aupro']:.4f}"
    click.echo(f"{line}; report: {Path(out) / 'report.html'}")
    record_run(registry, "eval", artifact, params={"data": data, "backend": backend, "precision": precision},
               metrics=metrics)
