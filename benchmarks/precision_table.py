"""Precision × (ELPV AUROC, Δ AUROC vs fp32, max |Δscore| vs fp32, p50 latency on onnxruntime CPU, model size).

Usage: python benchmarks/precision_table.py [--cells mono] [--artifact DIR] [--keep DIR] [--json FILE]
                                           [--methods minmax,entropy,percentile] [--mixed] [--rounds 3]
Fits the default PatchCore if no artifact is given (``--keep`` saves it with its variants). INT8:
Q/DQ, per-channel, calibrated on 64 good training cells, one row per calibration method; if the
first method costs more than 0.01 AUROC (or with ``--mixed``), a sensitivity sweep keeps in float
the conv groups whose float versions help most (mixed INT8) and reports that too. Accuracy on the
whole test split; latency (batch 1, 2 threads, every 6th test cell) as the median of interleaved
rounds, so that load from other processes on a shared machine falls on every row alike. Runs with
the machine's default OPENBLAS settings.
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


def scores_for(artifact: Artifact, frames, precision: str) -> np.ndarray:
    with Inspector(artifact, "onnxruntime", threads=2, precision=precision) as insp:
        return score_frames(insp, frames)[0]


def interleaved_latency(variants: dict[str, tuple[Path, str]], frames, runs: int, rounds: int) -> dict:
    """{name: (p50 ms, model-stage p50 ms)}: the median over ``rounds`` rounds, each timing every
    variant once in turn, so that load from other processes falls on all rows alike."""
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, (root, precision) in variants.items():
            with Inspector(Artifact.load(root), "onnxruntime", threads=2, precision=precision) as insp:
                lat = latency(insp, frames, runs, 10)
            samples[name].append((lat.total_p50, lat.stages_p50["infer"]))
    return {name: tuple(np.median(np.array(v), axis=0)) for name, v in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", default="mono")
    parser.add_argument("--artifact", default=None)
    parser.add_argument("--runs", type=int, default=100, help="Timed frames per variant and round.")
    parser.add_argument("--rounds", type=int, default=3, help="Interleaved latency rounds (median reported).")
    parser.add_argument("--json", default=None)
    parser.add_argument("--keep", default=None, help="Copy the artifact with its fp16 / first-method int8 here.")
    parser.add_argument("--methods", default="minmax", help="INT8 calibration methods, one row each "
                        "(minmax,entropy,percentile); the first is the one swept for mixed INT8.")
    parser.add_argument("--mixed", action="store_true", help="Run the mixed-INT8 sweep even within 0.01 AUROC.")
    args = parser.parse_args()
    split = load_elpv(args.cells)
    work = Path(tempfile.mkdtemp(prefix="precision-"))
    root = work / "fp"
    if args.artifact:
        shutil.copytree(args.artifact, root)
    else:
        fit_and_export(split.train, "patchcore", {}, root, progress=False)
    frames = [read_image(p) for p in split.test]
    labels = np.asarray(split.test_labels)
    calib = list(split.train[:64])
    methods = args.methods.split(",")
    add_variant(root, "fp16")
    variants: dict[str, tuple[Path, str]] = {"fp32": (root, "fp32"), "fp16": (root, "fp16")}
    for method in methods:  # each INT8 variant in its own copy (they share the file name model.int8.onnx)
        copy = work / f"int8-{method}"
        shutil.copytree(root, copy)
        add_variant(copy, "int8", calib, method)
        variants[f"int8 {method}"] = (copy, "int8")
    scores = {name: scores_for(Artifact.load(d), frames, precision) for name, (d, precision) in variants.items()}
    base = scores["fp32"]
    auroc32 = auroc(labels, base)
    if auroc32 - auroc(labels, scores[f"int8 {methods[0]}"]) > 0.01 or args.mixed:
        name, copy = mixed_int8(work, root, frames, labels, calib, base, methods[0])
        variants[name] = (copy, "int8")
        scores[name] = scores_for(Artifact.load(copy), frames, "int8")
    timing = interleaved_latency(variants, frames[::6], args.runs, args.rounds)
    rows = []
    for name, (d, precision) in variants.items():
        artifact, delta = Artifact.load(d), np.abs(scores[name] - base)
        value = auroc(labels, scores[name])
        rows.append({"precision": name, "AUROC": value, "Δ AUROC": value - auroc32, "max |Δscore|": float(delta.max()),
                     "max rel Δscore": float(np.max(delta / base)), "p50 ms": timing[name][0],
                     "model p50 ms": timing[name][1],
                     "model MiB": artifact.path(artifact.variant(precision)).stat().st_size / 2**20})
    if args.keep:
        shutil.copytree(root, args.keep, dirs_exist_ok=True)
        shutil.copy(variants[f"int8 {methods[0]}"][0] / "model.int8.onnx", args.keep)
        shutil.copy(variants[f"int8 {methods[0]}"][0] / "metadata.json", args.keep)
    print(f"ELPV {args.cells}, {len(frames)} test cells, onnxruntime CPU, batch 1, 2 threads; latency: median "
          f"of {args.rounds} interleaved rounds of {args.runs} frames\n")
    print(format_table(rows, list(rows[0])))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


def mixed_int8(work: Path, root: Path, frames, labels, calib, base, method: str) -> tuple[str, Path]:
    """Keep in float the two conv groups (5 consecutive convs in graph order) whose float version lowers
    the INT8 score error most on 40 cells; returns the row name and the artifact copy holding it."""
    copy = work / "int8-mixed"
    shutil.copytree(root, copy)
    convs = quantizable_nodes(root / "model.onnx")
    groups = [convs[i:i + 5] for i in range(0, len(convs), 5)]
    probe = list(range(0, len(frames), max(1, len(frames) // 40)))[:40]
    errors = []
    for gi, group in enumerate(groups):
        add_variant(copy, "int8", calib, method, exclude=group)
        s = scores_for(Artifact.load(copy), [frames[i] for i in probe], "int8")
        errors.append((float(np.mean(np.abs(s - base[probe]) / base[probe])), gi))
        print(f"group {gi} ({group[0]} … {group[-1]}) in float: mean rel Δscore {errors[-1][0]:.4f}")
    keep = sorted(g for _, g in sorted(errors)[:2])
    excluded = [n for g in keep for n in groups[g]]
    add_variant(copy, "int8", calib, method, exclude=excluded)
    print(f"mixed INT8 keeps {len(excluded)} of {len(convs)} convs in float: {', '.join(excluded)}")
    return f"int8 {method} mixed ({len(excluded)} convs float)", copy


if __name__ == "__main__":
    main()
