"""Host vs graph scoring placement per backend (batch 1): latency and agreement, artifact sizes.

Copies ARTIFACT to a scratch folder, adds ``model.graph.onnx`` (backbone + chunked scoring head,
scoring.graph), and times the pipeline (preprocess → infer → score → postprocess) with the host
head (the artifact's recorded kNN kernel) and with the graph head, on onnxruntime and OpenVINO
(fp32 and bf16). ``--record`` writes the faster placement per backend into ARTIFACT's metadata
(``scoring.placement_by_backend``; metadata.json is not hashed, like thresholds).

    .venv/bin/python benchmarks/bench_placement.py ARTIFACT --images DIR_OR_GLOB [--runs 100] [--record]
"""

from __future__ import annotations

import argparse
import glob
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from anomedge.artifact import Artifact
from anomedge.benchmark import latency, score_frames
from anomedge.errors import AnomedgeError
from anomedge.export.writer import add_graph_placement
from anomedge.runtime.pipeline import Inspector
from anomedge.runtime.preprocess import read_image

CONFIGS = [("onnxruntime", {}), ("openvino", {"precision": "fp32"}), ("openvino", {"precision": "bf16"})]


def sizes(root: Path) -> dict[str, float]:
    return {p.name: round(p.stat().st_size / 2**20, 3) for p in sorted(root.iterdir()) if p.is_file()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact")
    parser.add_argument("--images", required=True)
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--record", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    paths = sorted(glob.glob(str(Path(args.images) / "*.png")) if Path(args.images).is_dir() else glob.glob(args.images))
    frames = [read_image(p) for p in paths[: args.limit]]
    scratch = Path(tempfile.mkdtemp(prefix="placement-")) / "artifact"
    shutil.copytree(args.artifact, scratch)
    add_graph_placement(scratch)
    artifact = Artifact.load(scratch)
    rows, winners = [], {}
    for backend, options in CONFIGS:
        label = backend + (f" {options['precision']}" if options else "")
        results = {}
        for placement in ("host", "graph"):
            try:
                with Inspector(artifact, backend, threads=args.threads, placement=placement, **options) as inspector:
                    scores, _ = score_frames(inspector, frames)
                    lat = latency(inspector, frames, args.runs, 10)
            except AnomedgeError as exc:
                rows.append({"backend": label, "placement": placement, "note": str(exc)})
                continue
            results[placement] = (scores, lat)
            rows.append({"backend": label, "placement": placement, **{f"{k} ms": round(v, 3) for k, v in lat.stages_p50.items()},
                         "p50 ms": round(lat.total_p50, 3), "p99 ms": round(lat.total_p99, 3), "FPS": round(lat.fps, 1)})
        if len(results) == 2:
            (hs, hl), (gs, gl) = results["host"], results["graph"]
            rows[-1]["max rel Δscore vs host"] = float(np.max(np.abs(gs - hs) / np.abs(hs)))
            winners[label.split()[0] if backend == "onnxruntime" else label] = "graph" if gl.total_p50 < hl.total_p50 else "host"
    columns = list(dict.fromkeys(k for r in rows for k in r))
    print(f"{args.artifact}: {len(frames)} images, batch 1, {args.threads} threads, {args.runs} timed runs")
    print(" | ".join(columns))
    for r in rows:
        print(" | ".join(f"{r[c]:.3g}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in columns))
    print("faster placement:", winners)
    print("artifact files (MiB):", sizes(scratch))
    if args.record:
        with Artifact.edit(args.artifact) as edit:
            edit.meta["scoring"]["placement_by_backend"] = winners
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "winners": winners, "sizes_mib": sizes(scratch)}, indent=2))
    shutil.rmtree(scratch.parent)


if __name__ == "__main__":
    main()
