"""Every registered detector, fitted, exported and measured on this machine → markdown table + JSON.

For each variant below (detector × parameters) and each data set (ELPV mono / poly, synthetic brick):
fit on the good training images (``fit_and_export``: 10 % held out for the default threshold), score
every test image through the exported artifact on onnxruntime (host scoring), and record
- image AUROC (ELPV mono, ELPV poly, synthetic), pixel AUROC (synthetic: maps resized to the masks),
- artifact size (all hashed files), fit time (mono),
- runtime p50 latency (onnxruntime, batch 1, 2 threads; ``anomedge.benchmark.latency`` via
  ``bench_backends``) and max |Δscore| / max rel Δscore runtime vs the PyTorch reference on
  ``--parity-frames`` mono test frames.
ViT rows use random-init weights (no model hub on this machine): their AUROCs say nothing about
pretrained DINOv2/MAE/Swin, only that the pipeline runs end to end.

    .venv/bin/python benchmarks/detector_table.py --cells mono --json runs/detector_table.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from anomedge.benchmark import bench_backends  # noqa: E402
from anomedge.calibrate.metrics import auroc, pixel_auroc  # noqa: E402
from anomedge.datasets import DATASETS, load_dataset  # noqa: E402
from anomedge.errors import AnomedgeError  # noqa: E402
from anomedge.export.fit import fit_and_export  # noqa: E402
from anomedge.models.detector import DETECTORS  # noqa: E402
from anomedge.runtime.pipeline import Inspector  # noqa: E402
from anomedge.runtime.preprocess import read_image  # noqa: E402

MAX = {"name": "max"}
TOP5 = {"name": "top_fraction_mean", "fraction": 0.05}
VIT_RANDOM = {"weights": "none", "image_size": 224, "blocks": [-1]}
# (row label, detector, parameters, note)
VARIANTS: list[tuple[str, str, dict, str]] = [
    ("patchcore", "patchcore", {}, "1 % coreset, top-5 % mean"),
    ("patchcore max", "patchcore", {"reduction": MAX}, "image score = max patch"),
    ("patchcore 10% coreset", "patchcore", {"coreset_fraction": 0.1}, ""),
    # PaDiM rows spell out grid and reduction so they stay the same rows whatever the defaults are.
    ("padim 14×14 max", "padim", {"grid_pool": 2, "reduction": MAX}, ""),
    ("padim 14×14 top5%", "padim", {"grid_pool": 2, "reduction": TOP5}, ""),
    ("padim 14×14 top5% fp16", "padim", {"grid_pool": 2, "reduction": TOP5, "factor_dtype": "float16"},
     "float16 factor"),
    ("padim 14×14 top5% ridge", "padim", {"grid_pool": 2, "reduction": TOP5, "shrinkage": "none", "ridge": 0.01},
     "paper: sample cov + 0.01·I"),
    ("padim 14×14 top5% 152 ch", "padim", {"grid_pool": 2, "reduction": TOP5, "n_channels": None},
     "no random channel subset"),
    ("padim 28×28 top5%", "padim", {"grid_pool": 1, "reduction": TOP5}, "full stride-8 grid"),
    ("padim 28×28 top5% fp16", "padim", {"grid_pool": 1, "reduction": TOP5, "factor_dtype": "float16"}, ""),
    ("padim 14×14 top5% flips", "padim", {"grid_pool": 2, "reduction": TOP5, "augment": "hflip,vflip,rot180"},
     "+ flipped / 180° training copies"),
    ("padim 7×7 max", "padim", {"grid_pool": 4, "reduction": MAX}, ""),
    ("padim 7×7 top5%", "padim", {"grid_pool": 4, "reduction": TOP5}, "top 2 of 49 positions"),
    ("padim stages 1+2+4 14×14 top5%", "padim", {"backbone": {"stages": [1, 2, 4]}, "grid_pool": 4, "reduction": TOP5},
     "stride-4 grid pooled ×4"),
    ("ensemble", "ensemble", {}, "PaDiM 2+3+4 14×14 top-2 % + PatchCore, one Lite0 pass, z-score fusion"),
    ("ensemble robust", "ensemble", {"normalisation": "robust"}, "as ensemble, median / MAD normalisation"),
    ("global_knn k=1", "global_knn", {"k": 1}, ""),
    ("global_knn k=5", "global_knn", {"k": 5}, ""),
    ("kmeans 8", "kmeans", {"n_clusters": 8}, ""),
    ("kmeans 16", "kmeans", {"n_clusters": 16}, ""),
    ("vit dinov2-s patch cos", "vit", {**VIT_RANDOM}, "random init"),
    ("vit dinov2-s patch l2", "vit", {**VIT_RANDOM, "metric": "l2"}, "random init"),
    ("vit dinov2-s image maha", "vit", {**VIT_RANDOM, "level": "image", "scoring": "mahalanobis", "pca_dim": 64},
     "random init"),
    ("vit mae-b patch cos", "vit", {**VIT_RANDOM, "model": "vit_base_patch16_224.mae"}, "random init"),
    ("vit swin-t patch cos", "vit", {**VIT_RANDOM, "model": "swin_tiny_patch4_window7_224", "blocks": [1, 2]},
     "random init; stages 1+2 (stride 8)"),
    ("autoencoder", "autoencoder", {}, "64 px, MSE"),
    ("autoencoder ssim", "autoencoder", {"ssim_weight": 1.0, "error_map": "ssim"}, "MSE + SSIM loss, SSIM map"),
    ("mae", "mae", {}, "64 px, LayerNorm"),
    ("mae dyt", "mae", {"norm": "dyt"}, "Dynamic Tanh"),
    ("simplenet", "simplenet", {}, "adaptor + discriminator, σ 0.15, 65k patches × 8 epochs, top-5 %"),
    ("simplenet flips", "simplenet", {"augment": "hflip,vflip,rot180"}, "+ flipped / 180° training copies"),
    ("teacher_student", "teacher_student", {}, "EfficientAD-style: student on Lite0 block 1 → blocks 2+4, 10 epochs, max"),
    ("synthetic_seg", "synthetic_seg", {"epochs": 2}, "conv head on Lite0 2+4 + kNN channel, drawn defects"),
]
KNOWN = {d for _, d, _, _ in VARIANTS}


def variants(only: list[str] | None) -> list[tuple[str, str, dict, str]]:
    rows = list(VARIANTS)
    for name in DETECTORS:  # detectors registered by others (autoencoders …): their defaults
        if name not in KNOWN:
            rows.append((name, name, {}, "defaults"))
    if only:  # a row label selects that row; a detector name (that is not a label) all of its rows
        labels = {r[0] for r in rows}
        rows = [r for r in rows if r[0] in only or (r[1] in only and r[1] not in labels)]
    return rows


def read_mask(path, shape) -> np.ndarray:
    if path is None:
        return np.zeros(shape, np.uint8)
    return (cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) > 127).astype(np.uint8)


def run_scores(artifact, paths, batch: int = 8, want_maps: bool = False, mask_shape=None):
    scores, maps = [], []
    with Inspector(artifact, "onnxruntime", threads=2) as insp:
        for start in range(0, len(paths), batch):
            result = insp.inspect([read_image(p) for p in paths[start:start + batch]])
            scores.append(result.scores)
            if want_maps:
                maps.extend(cv2.resize(m, mask_shape[::-1], interpolation=cv2.INTER_LINEAR) for m in result.maps)
    return np.concatenate(scores), (np.stack(maps) if want_maps else None)


def artifact_mb(artifact) -> float:
    return sum((artifact.root / f).stat().st_size for f in artifact.metadata.files) / 2**20


def measure(label, detector, params, data, out, args, bench: bool) -> dict:
    split = load_dataset(data)
    report = fit_and_export(split.train, detector, params, out, progress=False)
    art = report.artifact
    row = {"fit_s": report.fit_seconds, "size_mb": artifact_mb(art), "n_fit": report.n_fit}
    masks = split.test_masks is not None and any(m is not None for m in split.test_masks)
    shape = None
    if masks:
        first = next(m for m in split.test_masks if m is not None)
        shape = cv2.imread(str(first), cv2.IMREAD_GRAYSCALE).shape
    scores, maps = run_scores(art, list(split.test), want_maps=masks, mask_shape=shape)
    row["auroc"] = auroc(split.test_labels, scores)
    if masks:
        gt = np.stack([read_mask(m, shape) for m in split.test_masks])
        row["pixel_auroc"] = pixel_auroc(gt, maps)
    if bench:
        frames = [read_image(p) for p in split.test[: args.parity_frames]]
        reports = bench_backends(art, frames, ["onnxruntime"], runs=args.runs, warmup=5, threads=2)
        ref, ort = reports[0], reports[-1]
        if ort.error or ref.error:
            row["bench_note"] = ort.error or ref.error
        else:
            row.update({"p50_ms": ort.latency.total_p50, "torch_p50_ms": ref.latency.total_p50,
                        "max_abs_dscore": float(np.abs(ort.scores - ref.scores).max()),
                        "max_rel_dscore": ort.parity.max_rel_score_diff, "agree": ort.parity.decision_agreement})
    return row


def fmt(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", default="mono,poly", help="ELPV cell types (comma list)")
    ap.add_argument("--synthetic", default="brick", help="synthetic texture ('' to skip)")
    ap.add_argument("--only", default="", help="comma list of row labels or detector names")
    ap.add_argument("--runs", type=int, default=30, help="timed frames per backend")
    ap.add_argument("--parity-frames", type=int, default=24)
    ap.add_argument("--json", default="runs/detector_table.json")
    ap.add_argument("--keep", default="", help="keep artifacts under this folder (default: temporary)")
    ap.add_argument("--render", nargs="+", metavar="JSON", help="print one table from saved JSON files; measure nothing")
    args = ap.parse_args(argv)
    if args.render:
        print(render_saved(args.render))
        return 0

    cells = [c for c in args.cells.split(",") if c]
    datasets = [f"elpv:{c}" for c in cells]
    notes = []
    if args.synthetic:
        if "synthetic" in DATASETS:
            datasets.append(f"synthetic:{args.synthetic}")
        else:
            notes.append("synthetic data set not available: synthetic columns skipped")
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="detector_table_"))
    results = []
    for label, detector, params, note in variants([s for s in args.only.split(",") if s]):
        entry = {"row": label, "detector": detector, "params": params, "note": note, "data": {}}
        for i, data in enumerate(datasets):
            start = time.perf_counter()
            try:
                entry["data"][data] = measure(label, detector, params, data, work / label.replace(" ", "_") / data.replace(":", "-"),
                                              args, bench=i == 0)
            except AnomedgeError as exc:
                entry["data"][data] = {"error": str(exc)}
            print(f"[{label} | {data}] {time.perf_counter() - start:.0f} s: {entry['data'][data]}", file=sys.stderr, flush=True)
        results.append(entry)
        write_json(args.json, datasets, notes, results)  # after every row: a long run keeps what it measured
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)

    print(render(datasets, results))
    for n in notes:
        print(f"\nNote: {n}")
    write_json(args.json, datasets, notes, results)
    return 0


def render(datasets: list[str], results: list[dict]) -> str:
    """The markdown table of ``results`` rows (fit time, latency and parity from the first data set)."""
    syn = next((d for d in datasets if d.startswith("synthetic")), None)
    head = ["detector", "ELPV mono AUROC", "ELPV poly AUROC", "synthetic img AUROC", "synthetic pixel AUROC",
            "artifact MB", "fit s", "p50 ms (ort)", "p50 ms (torch)", "max abs Δscore", "max rel Δscore", "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in results:
        d = e["data"]
        first = d.get(datasets[0], {}) if datasets else {}
        mono, poly, s = d.get("elpv:mono", {}), d.get("elpv:poly", {}), d.get(syn, {}) if syn else {}
        err = "; ".join(f"{k}: {v['error']}" for k, v in d.items() if "error" in v)
        cells = [e["row"], fmt(mono.get("auroc"), ".3f"), fmt(poly.get("auroc"), ".3f"), fmt(s.get("auroc"), ".3f"),
                 fmt(s.get("pixel_auroc"), ".3f"), fmt(first.get("size_mb"), ".2f"), fmt(first.get("fit_s"), ".1f"),
                 fmt(first.get("p50_ms"), ".1f"), fmt(first.get("torch_p50_ms"), ".1f"),
                 fmt(first.get("max_abs_dscore"), ".2e"),
                 fmt(first.get("max_rel_dscore"), ".1e"), "; ".join(x for x in (e["note"], err) if x)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_saved(paths: list[str]) -> str:
    """One table from the JSON files of several runs (e.g. a long run resumed with ``--only``)."""
    datasets, results = [], []
    for path in paths:
        saved = json.loads(Path(path).read_text())
        datasets += [d for d in saved["datasets"] if d not in datasets]
        results += saved["rows"]
    return render(datasets, results)


def write_json(path, datasets, notes, results) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({"datasets": datasets, "notes": notes, "rows": results}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
