"""The ELPV protocol of issue 13: image AUROC mean ± std over 5 splits, through the exported artifact.

For each row (label → detector, parameters; ``ROWS``), each cell type (mono, poly) and each seed s:
``load_elpv(cell, seed=s)`` (the project's split: 60 % of the good cells train, the rest + every
defective cell test), ``fit_and_export`` on the train cells (10 % held out for the default
threshold, seed s), every test image scored through the artifact on onnxruntime (host scoring,
batch 8) → image AUROC. The ELPV test set is touched only here, once per row; nothing is chosen on it.
Reported per row and cell: AUROC mean ± std (ddof 1) over the seeds, every split's value, fit time
(mean), artifact size; on the first split, synthetic defects drawn on the fit's own held-out good
images (``synthetic_supervision.held_out_synthetic``: never trained on) → synthetic image AUROC, pixel
AUROC and AUPRO; then runtime p50 (onnxruntime, batch 1, 2 threads, ``--runs`` frames) of the
seed-0 mono artifacts, measured in ONE interleaved loop (row after row per frame) so that the ratios
to PatchCore are fair on a shared machine. JSON after every fit (a long run keeps what it measured)
and a markdown table at the end. Each row's ``model.onnx`` is exported once and reused for its other
splits (``OnnxCache``: the graph does not depend on the data).

    python benchmarks/elpv_splits.py --rows patchcore,padim,ensemble --seeds 0,1,2,3,4
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from anomedge.artifact import Artifact  # noqa: E402
from anomedge.calibrate.metrics import auroc  # noqa: E402
from anomedge.datasets.elpv import elpv_root, load_elpv, read_labels  # noqa: E402
from anomedge.export.fit import fit_and_export, split_holdout  # noqa: E402
from anomedge.progress import steps  # noqa: E402
from anomedge.runtime.pipeline import Inspector  # noqa: E402
from anomedge.runtime.preprocess import read_image  # noqa: E402
from synthetic_supervision import held_out_synthetic, synthetic_metrics  # noqa: E402

TOP2 = {"name": "top_fraction_mean", "fraction": 0.02}
# label → (detector, parameters, note)
ROWS: dict[str, tuple[str, dict, str]] = {
    "patchcore": ("patchcore", {}, "defaults: stages 2+4, 1 % coreset, top-5 %"),
    "padim": ("padim", {}, "defaults: stages 2+4, 14×14, 100 ch, top-5 %"),
    "padim 234 top2": ("padim", {"backbone": {"stages": [2, 3, 4]}, "reduction": TOP2}, "the ensemble's PaDiM member alone"),
    "ensemble": ("ensemble", {"refit": False}, "PaDiM 2+3+4 top-2 % + PatchCore, one Lite0 pass, z-score fusion"),
    "ensemble robust": ("ensemble", {"normalisation": "robust", "refit": False}, "as ensemble, median / MAD"),
    "ensemble refit": ("ensemble", {"refit": True}, "as ensemble, members refitted on all good images (the default)"),
    "teacher_student": ("teacher_student", {}, "defaults: EfficientAD-style student of Lite0 2+4"),
    "patchcore pad0": ("patchcore", {"backbone": {"border_pad": 0}}, "as patchcore, no mirrored border"),
    "ensemble refit pad0": ("ensemble", {"refit": True, "backbone": {"border_pad": 0}},
                            "as ensemble refit, no mirrored border"),
}


class OnnxCache:
    """A row's ``model.onnx`` depends on its configuration only (backbone weights, stages, the seeded channel
    subset — never on the training images), so it is exported once per row and copied for the other
    splits: the dynamo export is the slowest step of a fit on this shared machine. Installed in place of
    ``export.writer.export_onnx`` for this script only; ``label`` names the row being fitted."""

    def __init__(self, folder: Path):
        import anomedge.export.writer as writer

        self.folder, self.label, self.writer = folder, "", writer
        self.original = writer.export_onnx
        writer.export_onnx = self

    def __call__(self, module, spec, path, output_names):
        cached = self.folder / f"{self.label.replace(' ', '_')}.onnx"
        if not cached.exists():
            self.original(module, spec, cached, output_names)
        shutil.copyfile(cached, path)
        return Path(path)


def score_test(artifact: Artifact, paths, batch: int = 8) -> np.ndarray:
    with Inspector(artifact, "onnxruntime", threads=2) as insp:
        return np.concatenate([insp.inspect([read_image(p) for p in paths[i:i + batch]]).scores
                               for i in range(0, len(paths), batch)])


@functools.cache
def ratings() -> dict[Path, float]:
    """Every ELPV cell's expert defect probability (labels.csv, read once per process)."""
    return {path: prob for path, prob, _ in read_labels(elpv_root())}


def auroc_by_rating(split, scores: np.ndarray) -> dict[str, float]:
    """Image AUROC of the good test cells vs each expert rating of the defective ones (2/3, 1): how much
    of the error sits on the cells the experts themselves were unsure of."""
    probs = np.array([ratings()[p] for p in split.test])
    good = split.test_labels == 0
    return {f"{r:.2f}": auroc(np.r_[np.zeros(good.sum()), np.ones((probs == r).sum())],
                              np.r_[scores[good], scores[probs == r]])
            for r in sorted(set(probs[~good].tolist()))}


def synthetic(artifact: Artifact, train, seed: int) -> dict[str, float]:
    """Synthetic image AUROC / pixel AUROC / AUPRO on the held-out good images of ``fit_and_export``
    (holdout 0.1, ``seed``), the same images with a drawn defect each."""
    _, hold = split_holdout(list(train), 0.1, seed)
    return synthetic_metrics(artifact, *held_out_synthetic(hold, artifact.metadata.input.height))


def artifact_mb(artifact: Artifact) -> float:
    return sum((artifact.root / f).stat().st_size for f in artifact.metadata.files) / 2**20


def interleaved_p50(artifacts: dict[str, Artifact], frames, runs: int, warmup: int = 5) -> dict[str, float]:
    """Batch-1 end-to-end ms per frame, row after row for every frame (one loop, same load for all)."""
    insps = {label: Inspector(a, "onnxruntime", threads=2) for label, a in artifacts.items()}
    times: dict[str, list[float]] = {label: [] for label in insps}
    try:
        for i in steps(range(warmup + runs), warmup + runs, "latency", None):
            frame = frames[i % len(frames)]
            for label, insp in insps.items():
                start = time.perf_counter()
                insp.inspect([frame])
                if i >= warmup:
                    times[label].append((time.perf_counter() - start) * 1e3)
    finally:
        for insp in insps.values():
            insp.close()
    return {label: float(np.median(t)) for label, t in times.items()}


def summarise(results: dict) -> dict:
    out = {}
    for label, cells in results["rows"].items():
        out[label] = {}
        for cell, runs in cells.items():
            values = [r["auroc"] for r in runs.values()]
            out[label][cell] = {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                                "n": len(values), "fit_s": float(np.mean([r["fit_s"] for r in runs.values()])),
                                "size_mb": float(np.mean([r["size_mb"] for r in runs.values()]))}
    return out


def render(results: dict) -> str:
    summary = summarise(results)
    p50 = results.get("p50_ms", {})
    base = p50.get("patchcore")
    lines = ["| row | mono AUROC | poly AUROC | synthetic img AUROC / pixel AUROC / AUPRO (mono, first split) | "
             "fit s (mono / poly) | artifact MB | p50 ms | p50 / PatchCore | note |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label, cells in summary.items():
        def cell(c):
            s = cells.get(c)
            return "–" if s is None else f"{s['mean']:.4f} ± {s['std']:.4f} (n={s['n']})"
        fit = " / ".join(f"{cells[c]['fit_s']:.0f}" if c in cells else "–" for c in ("mono", "poly"))
        size = cells.get("mono", next(iter(cells.values())))["size_mb"]
        ms = p50.get(label)
        ratio = f"{ms / base:.2f}×" if ms and base else "–"
        first = next(iter(results["rows"][label].get("mono", {}).values()), {})
        syn = (" / ".join(f"{first[k]:.3f}" for k in ("syn_auroc", "syn_pixel_auroc", "syn_aupro"))
               if "syn_aupro" in first else "–")
        lines.append(f"| {label} | {cell('mono')} | {cell('poly')} | {syn} | {fit} | {size:.1f} | "
                     f"{'–' if ms is None else f'{ms:.1f}'} | {ratio} | {ROWS.get(label, ('', {}, ''))[2]} |")
    return "\n".join(lines)


def synthetic_only(args) -> int:
    """``--synthetic LABEL=ARTIFACT …``: synthetic metrics of saved first-split artifacts, merged into ``--json``."""
    cell, seed = args.cells.split(",")[0], int(args.seeds.split(",")[0])
    split = load_elpv(cell, seed=seed)
    out_json = Path(args.json)
    results = json.loads(out_json.read_text())
    for label, path in (item.split("=", 1) for item in args.synthetic):
        entry = results["rows"][label][cell][str(seed)]
        artifact = Artifact.load(path)
        entry.update(synthetic(artifact, split.train, seed))
        entry["auroc_by_rating"] = auroc_by_rating(split, score_test(artifact, list(split.test)))
        print(f"[{label} | {cell} | seed {seed}] synthetic {entry['syn_auroc']:.4f} / {entry['syn_pixel_auroc']:.4f} / "
              f"{entry['syn_aupro']:.4f}", file=sys.stderr, flush=True)
        out_json.write_text(json.dumps(results, indent=1))
    table = render(results)
    Path(args.md).write_text(table + "\n")
    print(table)
    return 0


def latency_only(args) -> int:
    """``--latency LABEL=ARTIFACT …``: the interleaved p50 of saved artifacts, merged into ``--json``."""
    pairs = dict(item.split("=", 1) for item in args.latency)
    cell, seed = args.cells.split(",")[0], int(args.seeds.split(",")[0])
    frames = [read_image(p) for p in load_elpv(cell, seed=seed).test[:20]]
    out_json = Path(args.json)
    results = json.loads(out_json.read_text()) if out_json.exists() else {"rows": {}}
    results["p50_ms"] = interleaved_p50({k: Artifact.load(v) for k, v in pairs.items()}, frames, args.runs)
    results["p50_note"] = f"{cell} seed {seed} artifacts, onnxruntime, batch 1, 2 threads, interleaved, {args.runs} frames"
    results["summary"] = summarise(results)
    out_json.write_text(json.dumps(results, indent=1))
    table = render(results)
    Path(args.md).write_text(table + "\n")
    print(table)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="patchcore,padim,ensemble", help=f"comma list of: {', '.join(ROWS)}")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--cells", default="mono,poly")
    ap.add_argument("--runs", type=int, default=40, help="timed frames per row for p50 (0: skip)")
    ap.add_argument("--json", default="runs/elpv_splits.json")
    ap.add_argument("--md", default="runs/elpv_splits.md")
    ap.add_argument("--resume", action="store_true", help="keep the splits already in --json, measure the rest")
    ap.add_argument("--keep", default="", help="keep the first split's artifacts in this folder (default: temporary)")
    ap.add_argument("--latency", nargs="+", metavar="LABEL=ARTIFACT",
                    help="only the interleaved p50 of these artifacts (first cell and seed's test frames), into --json")
    ap.add_argument("--synthetic", nargs="+", metavar="LABEL=ARTIFACT",
                    help="only the synthetic-defect metrics of these first-split artifacts, into --json")
    args = ap.parse_args(argv)
    if args.synthetic:
        return synthetic_only(args)
    if args.latency:
        return latency_only(args)
    rows = [r for r in args.rows.split(",") if r]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        ap.error(f"unknown row(s) {', '.join(unknown)}; choose from: {', '.join(ROWS)}")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    cells = [c for c in args.cells.split(",") if c]
    out_json = Path(args.json)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(out_json.read_text()) if args.resume and out_json.exists() else {"rows": {}}
    results["protocol"] = "anomedge.datasets.elpv.load_elpv(cell, seed); fit_and_export (holdout 0.1, seed); onnxruntime host"
    work = Path(tempfile.mkdtemp(prefix="elpv_splits_"))
    cache = OnnxCache(work)
    keep: dict[str, Artifact] = {}
    splits = {}
    try:
        for label in rows:  # row by row: a run cut short keeps whole rows
            cache.label = label
            for seed in seeds:
                for cell in cells:
                    first = seed == seeds[0] and cell == cells[0]
                    done = results["rows"].get(label, {}).get(cell, {})
                    if str(seed) in done and not (first and args.runs):
                        continue
                    split = splits.setdefault((cell, seed), load_elpv(cell, seed=seed))
                    detector, params, _ = ROWS[label]
                    out = (Path(args.keep) if args.keep and first else work) / f"{label.replace(' ', '_')}_{cell}_{seed}"
                    start = time.perf_counter()
                    report = fit_and_export(split.train, detector, params, out, seed=seed, progress=False)
                    scores = score_test(report.artifact, list(split.test))
                    entry = {"auroc": auroc(split.test_labels, scores), "fit_s": report.fit_seconds,
                             "size_mb": artifact_mb(report.artifact), "n_train": len(split.train),
                             "n_test": len(split.test), "auroc_by_rating": auroc_by_rating(split, scores)}
                    if seed == seeds[0]:
                        entry.update(synthetic(report.artifact, split.train, seed))
                    results["rows"].setdefault(label, {}).setdefault(cell, {})[str(seed)] = entry
                    out_json.write_text(json.dumps(results, indent=1))
                    print(f"[{label} | {cell} | seed {seed}] {time.perf_counter() - start:.0f} s: "
                          f"AUROC {entry['auroc']:.4f}, fit {entry['fit_s']:.0f} s, {entry['size_mb']:.1f} MB",
                          file=sys.stderr, flush=True)
                    if first:
                        keep[label] = report.artifact
                    else:
                        shutil.rmtree(out, ignore_errors=True)
        if args.runs and keep:
            split = load_elpv(cells[0], seed=seeds[0])
            frames = [read_image(p) for p in split.test[:20]]
            results["p50_ms"] = interleaved_p50(keep, frames, args.runs)
            results["p50_note"] = f"{cells[0]} seed {seeds[0]} artifacts, onnxruntime, batch 1, 2 threads, interleaved"
        results["summary"] = summarise(results)
        out_json.write_text(json.dumps(results, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = render(results)
    Path(args.md).write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
