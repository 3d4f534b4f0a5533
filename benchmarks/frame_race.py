"""What each scoring set-up costs per frame, side by side: host placement with every kNN kernel, graph placement.

Issue 12's "two thread pools fighting": numpy's kNN kernel runs on OpenBLAS, whose idle workers spin for
≈ 0.1 s after each call, on the cores the backbone's onnxruntime pool needs for the next frame. A race of
the search alone does not see that; the kernel race (``runtime.kernel_race``) now races whole frames.
This script measures the end-to-end effect on real frames: one process, every set-up opened once, timed
in **blocks** of ``--block`` frames (a set-up's steady state includes what it does to its own next frame;
frame-by-frame round-robin would bill one set-up's spinning workers to the next one), blocks rotated
round by round, a 0.2 s pause between blocks. Paired ratio = median over rounds of (baseline block p50 ÷
this block p50), baseline = host placement with the numpy kernel (the recorded default before).

    .venv/bin/python benchmarks/frame_race.py ARTIFACT --data elpv:mono [--rounds 12] [--block 25]

ARTIFACT: a PatchCore or ensemble artifact; graph placement is added to a scratch copy when missing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from anomedge.artifact import Artifact
from anomedge.export.writer import add_graph_placement
from anomedge.runtime.kernel_race import choose_kernel, cpu_name, frame_companion, knn_head
from anomedge.runtime.pipeline import Inspector
from anomedge.runtime.preprocess import read_image

KERNELS = ("numpy", "onnxruntime", "pruned")
SETTLE_S = 0.2


def setups(artifact: Artifact, backends: list[str], threads: int) -> dict[str, Inspector]:
    out = {}
    for backend in backends:
        for kernel in KERNELS:
            out[f"{backend} host, {kernel} kNN"] = Inspector(artifact, backend, placement="host", knn_kernel=kernel,
                                                            threads=threads)
        out[f"{backend} graph"] = Inspector(artifact, backend, placement="graph", threads=threads)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact")
    parser.add_argument("--data", default="elpv:mono", help="data set spec whose test images are the frames")
    parser.add_argument("--backends", default="onnxruntime,openvino")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--block", type=int, default=25)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    from anomedge.datasets import load_dataset

    source = Artifact.load(args.artifact)
    if knn_head(source) is None:
        raise SystemExit(f"{args.artifact}: no kNN head; this benchmark compares kNN kernels and placements")
    scratch = Path(tempfile.mkdtemp(prefix="frame-race-"))
    root = scratch / "artifact"
    shutil.copytree(source.root, root, ignore=shutil.ignore_patterns(".cache"))
    if "graph_model" not in Artifact.load(root).metadata.scoring:
        add_graph_placement(root)
    artifact = Artifact.load(root)
    split = load_dataset(args.data)
    frames = [read_image(p) for p in split.test[: args.rounds * args.block]]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    opened = setups(artifact, backends, args.threads)
    raced = {}
    for backend in backends:
        probe = opened[f"{backend} host, numpy kNN"]
        raced[backend] = choose_kernel(artifact, fresh=True, companion=frame_companion(probe.backend, artifact),
                                       backend=probe.backend.name)
    names = list(opened)
    for name in names:  # warm-up
        for f in frames[:5]:
            opened[name].inspect([f])
    blocks: dict[str, list[list[float]]] = {n: [] for n in names}
    start_all = time.time()
    for r in range(args.rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        chunk = [frames[(r * args.block + i) % len(frames)] for i in range(args.block)]
        for name in order:
            time.sleep(SETTLE_S)
            laps = []
            for f in chunk:
                t0 = time.perf_counter()
                opened[name].inspect([f])
                laps.append((time.perf_counter() - t0) * 1e3)
            blocks[name].append(laps)
        print(f"round {r + 1}/{args.rounds} ({time.time() - start_all:.0f} s)", flush=True)
    base = "onnxruntime host, numpy kNN" if "onnxruntime" in backends else names[0]
    rows = []
    for name in names:
        flat = np.concatenate(blocks[name])
        ratio = np.median([np.median(b) / np.median(o) for b, o in zip(blocks[base], blocks[name])])
        rows.append({"set-up": name, "p50 ms": float(np.median(flat)), "p99 ms": float(np.percentile(flat, 99)),
                     "min ms": float(flat.min()), "p99/p50": float(np.percentile(flat, 99) / np.median(flat)),
                     "× baseline (paired)": float(ratio)})
    for inspector in opened.values():
        inspector.close()
    print(f"CPU: {cpu_name()}, 2 threads, batch 1; {args.rounds} rounds × {args.block}-frame blocks of {args.data} "
          f"test cells; baseline: {base}")
    print("kernel race (whole frames): " + "; ".join(
        f"{b}: {c.kernel} wins (" + ", ".join(f"{k} {v:.1f}" for k, v in c.ms.items()) + " ms)" for b, c in raced.items()))
    print("| set-up | p50 ms | p99 ms | min ms | p99 / p50 | × baseline (paired) |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['set-up']} | {row['p50 ms']:.1f} | {row['p99 ms']:.1f} | {row['min ms']:.1f} | "
              f"{row['p99/p50']:.2f} | {row['× baseline (paired)']:.2f}× |")
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_name(), "rows": rows,
                                         "race": {b: {"kernel": c.kernel, "ms": c.ms} for b, c in raced.items()}},
                                        indent=2))
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
