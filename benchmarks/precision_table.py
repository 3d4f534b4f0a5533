"""Precision × (ELPV AUROC, Δ AUROC vs fp32, max |Δscore| vs fp32, p50 latency on onnxruntime CPU, model size).

Usage: python benchmarks/precision_table.py [--cells mono] [--artifact DIR] [--keep DIR] [--json FILE]
                                           [--methods minmax,entropy,percentile] [--mixed]
Fits the default PatchCore if no artifact is given (``--keep`` saves it with its variants). INT8:
Q/DQ, per-channel, calibrated on 64 good training cells, one row per calibration method; if the
first method costs more than 0.01 AUROC (or with ``--mixed``), a sensitivity sweep keeps in float
the conv groups whose float versions help most (mixed INT8) and reports that too. Runs with the
machine's default OPENBLAS settings; 2 threads.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from anomedge.artifact import Artifact
from anomedge.benchmark import latency, score_frames
from anomedge.calibrate.metrics import auroc
from anomedge.datasets.elpv import load_elpv
from anomedge.export.fit import fit_and_export
from anomedge.export.precision import add_variant, quantizable_nodes
from anomedge.registry_db import format_table
from anomedge.runtime.pipeline import Inspector
from anomedge.runtime.preprocess import read_image


def scores_for(artifact: Artifact, frames, precision: str, runs: int = 0):
    with Inspector(artifact, "onnxruntime", threads=2, precision=precision) as insp:
        scores, _ = score_frames(insp, frames)
        lat = latency(insp, frames, runs, 5) if runs else None
    return scores, lat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", default="mono")
    parser.add_argument("--artifact", default=None)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--json", default=None)
    parser.add_argument("--keep", default=None, help="Copy the artifact with its variants here.")
    parser.add_argument("--methods", default="minmax", help="INT8 calibration methods, one row each "
                        "(minmax,entropy,percentile); the first is the one kept and swept.")
    parser.add_argument("--mixed", action="store_true", help="Run the mixed-INT8 sweep even within 0.01 AUROC.")
    args = parser.parse_args()
    split = load_elpv(args.cells)
    work = Path(tempfile.mkdtemp(prefix="precision-"))
    if args.artifact:
        shutil.copytree(args.artifact, work / "art")
        root = work / "art"
    else:
        root = fit_and_export(split.train, "patchcore", {}, work / "art", progress=False).artifact.root
    frames = [read_image(p) for p in split.test]
    labels = np.asarray(split.test_labels)
    calib = list(split.train[:64])
    methods = args.methods.split(",")
    add_variant(root, "fp16")
    artifact = Artifact.load(root)
    rows, base = [], None
    for precision in ("fp32", "fp16"):
        scores, lat = scores_for(artifact, frames, precision, args.runs)
        base = scores if base is None else base
        rows.append({"precision": precision, **row(artifact, precision, scores, base, lat, auroc(labels, base), labels)})
    for method in reversed(methods):  # the first method's variant is left in place for the sweep
        add_variant(root, "int8", calib, method)
        artifact = Artifact.load(root)
        scores, lat = scores_for(artifact, frames, "int8", args.runs)
        rows.insert(2, {"precision": f"int8 {method}", **row(artifact, "int8", scores, base, lat, rows[0]["AUROC"],
                                                             labels)})
    if rows[0]["AUROC"] - rows[2]["AUROC"] > 0.01 or args.mixed:
        rows.append(mixed_int8(root, artifact, frames, labels, calib, base, rows[0]["AUROC"], args.runs,
                               methods[0]))
    if args.keep:
        shutil.copytree(root, args.keep, dirs_exist_ok=True)
    print(f"ELPV {args.cells}, {len(frames)} test cells, onnxruntime CPU, batch 1, 2 threads\n")
    print(format_table(rows, list(rows[0])))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


def row(artifact, precision, scores, base, lat, auroc32, labels) -> dict:
    """One table row: AUROC and its change, the largest absolute / relative score change vs fp32,
    p50 latency (total and the model stage) and the ONNX file size."""
    value = auroc(labels, scores)
    delta = np.abs(scores - base)
    return {"AUROC": value, "Δ AUROC": value - auroc32, "max |Δscore|": float(delta.max()),
            "max rel Δscore": float(np.max(delta / base)), "p50 ms": lat.total_p50,
            "infer ms": lat.stages_p50["infer"],
            "model MiB": artifact.path(artifact.variant(precision)).stat().st_size / 2**20}


def mixed_int8(root, artifact, frames, labels, calib, base, auroc32, runs, method="minmax"):
    """Keep in float the conv groups (5 consecutive convs in graph order) whose float version lowers the
    INT8 score error most on 40 cells; report the mixed model on the full test set."""
    convs = quantizable_nodes(artifact.path("model.onnx"))
    groups = [convs[i:i + 5] for i in range(0, len(convs), 5)]
    probe = list(range(0, len(frames), max(1, len(frames) // 40)))[:40]
    errors = []
    for gi, group in enumerate(groups):
        add_variant(root, "int8", calib, method, exclude=group)
        s, _ = scores_for(Artifact.load(root), [frames[i] for i in probe], "int8")
        errors.append((float(np.mean(np.abs(s - base[probe]) / base[probe])), gi))
    keep = [g for _, g in sorted(errors)[:2]]
    excluded = [n for g in keep for n in groups[g]]
    add_variant(root, "int8", calib, method, exclude=excluded)
    art = Artifact.load(root)
    scores, lat = scores_for(art, frames, "int8", runs)
    print(f"mixed INT8 keeps {len(excluded)} convs in float: {', '.join(excluded)}")
    return {"precision": f"int8 {method} mixed ({len(excluded)} convs float)", **row(art, "int8", scores, base, lat, auroc32, labels)}


if __name__ == "__main__":
    main()
