"""ad-demo: the main job on the embedded default data (ELPV solar cells, mono and poly).

Fit the default detector (``DEFAULT_DETECTOR``: the one-pass PaDiM + PatchCore ensemble on
EfficientNet-Lite0, ImageNet weights; ``--detector`` for another) on the good training cells, export the
artifact, score the held-out test cells through the torch-free runtime (onnxruntime + the host heads),
and print image AUROC, decision counts, latency (PyTorch reference vs runtime), parity and the race of
the exact kNN kernels on the artifact's bank.
"""

from __future__ import annotations

import click
import numpy as np

from ..models.detector import DEFAULT_DETECTOR, DETECTORS
from .common import format_table, one_line_errors, parse_params


def head_summary(scoring: dict) -> str:
    """One line on what the artifact scores with, e.g. 'kNN bank 2,493 rows' or the ensemble's members."""
    def one(block: dict) -> str:
        return f"kNN bank {block['bank_rows']:,} rows" if block.get("kind") == "knn" else str(block.get("kind"))
    if scoring.get("kind") == "ensemble":
        return "members " + ", ".join(f"{m['name']} ({one(m['scoring'])})" for m in scoring["members"])
    return one(scoring)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", default="runs/demo", show_default=True, type=click.Path(file_okay=False))
@click.option("--cells", default="mono,poly", show_default=True, help="ELPV cell types to run.")
@click.option("--detector", default=DEFAULT_DETECTOR, show_default=True, help=" | ".join(DETECTORS) + ".")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="Detector parameter (repeatable).")
@click.option("--runs", default=100, show_default=True, help="Timed frames per backend.")
@click.option("--threads", default=2, show_default=True)
@click.option("--limit", type=click.IntRange(min=4), default=None,
              help="A quick look: at most this many training cells and test cells (half good, half defective).")
@one_line_errors
def main(out, cells, detector, params, runs, threads, limit):
    from pathlib import Path

    from ..benchmark import artifact_kernel_race, bench_backends
    from ..calibrate.metrics import auroc
    from ..datasets.elpv import load_elpv
    from ..export.fit import fit_and_export
    from ..runtime.preprocess import read_image
    from .bench import bench_table

    values = parse_params(params)
    quality, races = [], []
    splits = {cell: load_elpv(cell) for cell in [c.strip() for c in cells.split(",")]}  # every name checked first
    for cell, split in splits.items():
        if limit:
            split = split.subset(limit)
        click.echo(f"\n== ELPV {cell}: {split.summary()}")
        report = fit_and_export(split.train, detector, values, Path(out) / f"elpv-{cell}")
        art = report.artifact
        click.echo(f"artifact {art.root} ({detector}): fit {report.fit_seconds:.1f} s, "
                   f"{head_summary(art.metadata.scoring)}, threshold {report.threshold:.4f}")
        frames = [read_image(p) for p in split.test]
        reports = bench_backends(art, frames, ["onnxruntime"], runs=runs, threads=threads)
        click.echo(bench_table(reports))
        ref, ort = reports[0], reports[-1]
        if ort.scores is None:
            raise click.ClickException(f"onnxruntime failed: {ort.error}")
        labels = np.asarray(split.test_labels)
        ng = ort.scores > report.threshold
        quality.append({"cells": cell, "test": len(labels), "AUROC (runtime)": auroc(labels, ort.scores),
                        "AUROC (torch)": auroc(labels, ref.scores) if ref.scores is not None else float("nan"),
                        "NG": int(ng.sum()), "OK": int((~ng).sum()), "true NG": int((ng & (labels == 1)).sum()),
                        "false NG": int((ng & (labels == 0)).sum()), "missed": int((~ng & (labels == 1)).sum()),
                        "speed-up": ref.latency.total_p50 / ort.latency.total_p50 if ref.latency else float("nan"),
                        "max rel Δscore": ort.parity.max_rel_score_diff if ort.parity else float("nan"),
                        "agree": ort.parity.decision_agreement if ort.parity else float("nan")})
        race = artifact_kernel_race(art, frames[0])
        if race is not None:
            races.append({"cells": cell, **race})
    click.echo("\n== Quality and decisions (runtime = onnxruntime + host heads; threshold = q0.99 of held-out good)")
    click.echo(format_table(quality, list(quality[0])))
    if races:
        click.echo("\n== kNN search, one image (k=1), the artifact's bank: exact host kernels vs faiss IndexFlatL2")
        click.echo(format_table(races, list(dict.fromkeys(k for r in races for k in r))))
