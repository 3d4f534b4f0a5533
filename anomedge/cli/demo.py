"""ad-demo: the main job on the embedded default data (ELPV solar cells, mono and poly).

Fit PatchCore (EfficientNet-Lite0, ImageNet weights) on the good training cells, export the artifact,
score the held-out test cells through the torch-free runtime (onnxruntime + fused kNN kernel), and
print image AUROC, decision counts, latency (PyTorch reference vs runtime) and parity.
"""

from __future__ import annotations

import click
import numpy as np

from .common import format_table, one_line_errors, parse_params


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", default="runs/demo", show_default=True, type=click.Path(file_okay=False))
@click.option("--cells", default="mono,poly", show_default=True, help="ELPV cell types to run.")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="PatchCore parameter (repeatable).")
@click.option("--runs", default=100, show_default=True, help="Timed frames per backend.")
@click.option("--threads", default=2, show_default=True)
@one_line_errors
def main(out, cells, params, runs, threads):
    from pathlib import Path

    from ..benchmark import artifact_kernel_race, bench_backends
    from ..calibrate.metrics import auroc
    from ..datasets.elpv import load_elpv
    from ..export.fit import fit_and_export
    from ..runtime.preprocess import read_image
    from .bench import bench_table

    values = parse_params(params)
    quality, races = [], []
    for cell in [c.strip() for c in cells.split(",")]:
        split = load_elpv(cell)
        click.echo(f"\n== ELPV {cell}: {split.summary()}")
        report = fit_and_export(split.train, "patchcore", values, Path(out) / f"elpv-{cell}")
        art = report.artifact
        click.echo(f"artifact {art.root}: fit {report.fit_seconds:.1f} s, bank {art.metadata.scoring['bank_rows']} rows, "
                   f"threshold {report.threshold:.4f}")
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
        races.append({"cells": cell, **artifact_kernel_race(art, frames[0])})
    click.echo("\n== Quality and decisions (runtime = onnxruntime + fused kNN; threshold = q0.99 of held-out good)")
    click.echo(format_table(quality, list(quality[0])))
    click.echo("\n== kNN search, one image (k=1): fused kernel vs faiss IndexFlatL2")
    click.echo(format_table(races, list(dict.fromkeys(k for r in races for k in r))))
