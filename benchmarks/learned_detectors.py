"""Learned detectors on ELPV: model choice on good images only, then the test sets once, over 5 splits.

Two modes, one detector per call (``--detector``, parameters as ``--param key=value`` JSON values), so
other detectors add their rows the same way:

``val``: model choice without any ELPV test label. Per cell type, split seed 0's training good cells
are split 80 / 20 (``split_holdout``); the detector is fitted on the 80 % and scored on the held-out
20 % (label 0) and on the same cells with one drawn defect each (label 1; ``datasets.synthetic``'s
scratch / spot / crack / missing-piece drawers, cycling) → the "val AUROC". ``--grid key=v1;v2`` sweeps
values (several ``--grid`` options form their product). For ``simplenet`` the frozen features of the
fit and validation images are extracted once and only the head is retrained per grid point (scored
in torch; its parity with the runtime is checked in ``test``); other detectors are exported and scored
on onnxruntime at every point.

``test``: for each seed in ``--seeds`` and each cell type: ``fit_and_export`` on the split's training
cells (10 % held out for the default threshold, as ``benchmarks/detector_table.py``), every test image
scored through the artifact on onnxruntime (host scoring, 2 threads) → image AUROC; fit time, artifact
size; on the first seed's first-cell artifact, runtime p50 (batch 1) interleaved frame by frame with each
``--compare`` detector's artifact of the same split, and parity (max rel Δscore, max Δmap, agreement)
vs the PyTorch reference on ``--parity-frames`` test frames, and ``ad-verify``'s check of the golden frames. Prints mean ± std per cell and detector.

``splits`` (simplenet): the same protocol over ``--seeds`` from one feature pass per cell type (see
``splits_simplenet``): the 5-split mean ± std at a fraction of the cost of 5 exports.

    python benchmarks/learned_detectors.py val --detector simplenet --grid noise_std=0.015;0.05;0.1
    python benchmarks/learned_detectors.py test --detector simplenet --param noise_std=0.05 --seeds 0-4 \\
        --compare patchcore --json runs/simplenet_test.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from anomedge.calibrate.metrics import auroc  # noqa: E402
from anomedge.datasets.elpv import load_elpv  # noqa: E402
from anomedge.export.fit import build_detector, fit_and_export, split_holdout  # noqa: E402
from anomedge.runtime.pipeline import Inspector  # noqa: E402
from anomedge.runtime.preprocess import read_image  # noqa: E402


def parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_params(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        out[key] = parse_value(value)
    return out


def parse_grid(items: list[str]) -> list[dict]:
    axes = []
    for item in items:
        key, _, values = item.partition("=")
        axes.append([(key, parse_value(v)) for v in values.split(";")])
    return [dict(combo) for combo in itertools.product(*axes)] or [{}]


def parse_seeds(text: str) -> list[int]:
    if "-" in text:
        lo, hi = text.split("-")
        return list(range(int(lo), int(hi) + 1))
    return [int(s) for s in text.split(",")]


# ---- validation set: held-out good cells + the same cells with one drawn defect ----------------------

def validation_set(cell: str, work: Path, holdout: float = 0.2, seed: int = 0):
    """(fit paths, val paths, val labels): split seed ``seed``'s training cells only — no test cell."""
    import cv2

    from anomedge.datasets.synthetic import DEFECTS, DRAWERS, _apply

    split = load_elpv(cell, seed=seed)
    fit, hold = split_holdout(list(split.train), holdout, seed)
    folder = work / f"val-{cell}-{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    bad = []
    for i, path in enumerate(hold):
        clean = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        size = min(clean.shape)
        clean = np.ascontiguousarray(clean[:size, :size])
        rng = np.random.default_rng([seed, i, 7])
        mask, delta = DRAWERS[DEFECTS[i % len(DEFECTS)]](clean, rng, SimpleNamespace(size=size))
        dst = folder / f"{i:04d}_{DEFECTS[i % len(DEFECTS)]}.png"
        cv2.imwrite(str(dst), _apply(clean, mask, delta))
        bad.append(dst)
    labels = np.r_[np.zeros(len(hold), np.int8), np.ones(len(bad), np.int8)]
    return fit, [*hold, *bad], labels


def runtime_scores(artifact, paths, batch: int = 8) -> np.ndarray:
    out = []
    with Inspector(artifact, "onnxruntime", threads=2) as insp:
        for start in range(0, len(paths), batch):
            out.append(insp.inspect([read_image(p) for p in paths[start:start + batch]]).scores)
    return np.concatenate(out)


def val_simplenet(params_list, cell, fit, val, labels, progress):
    """Head-only sweep: features extracted once per (backbone, size, aggregation, augment)."""
    import torch

    from anomedge.scoring.postprocess import image_scores

    cache: dict = {}
    rows = []
    for params in params_list:
        det = build_detector("simplenet", params, progress)
        cfg = det.config
        key = (json.dumps(cfg.backbone, sort_keys=True), cfg.image_size, cfg.aggregation, cfg.augment)
        if key not in cache:
            start = time.perf_counter()
            train = det.patches(fit)
            saved, det.views = det.views, ()
            val_patches = det.patches(val)
            det.views = saved
            h, w = det.grid
            cache[key] = (train, val_patches.reshape(len(val), h, w, -1), time.perf_counter() - start)
        train, val_patches, feat_s = cache[key]
        start = time.perf_counter()
        det.fit_patches(train, len(fit))
        with torch.no_grad():
            s = det.head.logits(det.head.adapt(val_patches))
            patch = torch.nn.functional.softplus(-s).numpy()
        score = image_scores(patch, cfg.reduction)
        other = {"max": image_scores(patch, {"name": "max"}),
                 "top1%": image_scores(patch, {"name": "top_fraction_mean", "fraction": 0.01}),
                 "top5%": image_scores(patch, {"name": "top_fraction_mean", "fraction": 0.05})}
        rows.append({"cell": cell, "params": params, "val_auroc": auroc(labels, score),
                     "val_auroc_by_reduction": {k: auroc(labels, v) for k, v in other.items()},
                     "train_s": time.perf_counter() - start, "features_s": feat_s,
                     "final_loss": det.history.epoch_loss[-1]})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def val_generic(detector, params_list, cell, fit, val, labels, work, progress):
    from anomedge.export.writer import write_detector

    rows = []
    for i, params in enumerate(params_list):
        start = time.perf_counter()
        det = build_detector(detector, params, progress).fit(fit)
        art = write_detector(det, work / f"{detector}-{cell}-{i}")
        rows.append({"cell": cell, "params": params, "val_auroc": auroc(labels, runtime_scores(art, val)),
                     "seconds": time.perf_counter() - start})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


# ---- test: 5 splits -------------------------------------------------------------------------------------

def artifact_mb(art) -> float:
    return sum((art.root / f).stat().st_size for f in art.metadata.files) / 2**20


def interleaved_p50(artifacts: dict, frames, runs: int, warmup: int = 5) -> dict:
    """Batch-1 latency of several artifacts on onnxruntime, one frame each in turn → {name: (p50, p99)} ms."""
    from contextlib import ExitStack

    with ExitStack() as stack:
        insps = {k: stack.enter_context(Inspector(a, "onnxruntime", threads=2)) for k, a in artifacts.items()}
        for i in range(warmup):
            for insp in insps.values():
                insp.inspect([frames[i % len(frames)]])
        times = {k: [] for k in insps}
        for i in range(runs):
            for k, insp in insps.items():
                start = time.perf_counter()
                insp.inspect([frames[i % len(frames)]])
                times[k].append((time.perf_counter() - start) * 1e3)
    return {k: (float(np.median(v)), float(np.percentile(v, 99))) for k, v in times.items()}


def test_mode(args, params: dict, work: Path) -> dict:
    from anomedge.benchmark import parity, reference_and_runtime

    detectors = [(args.detector, params), *[(c, {}) for c in args.compare]]
    results = {"detectors": [d for d, _ in detectors], "params": params, "runs": []}
    for seed in parse_seeds(args.seeds):
        for cell in args.cells.split(","):
            split = load_elpv(cell, seed=seed)
            arts = {}
            for name, p in detectors:
                start = time.perf_counter()
                rep = fit_and_export(split.train, name, p, work / f"{name}-{cell}-{seed}", progress=args.progress)
                scores = runtime_scores(rep.artifact, list(split.test))
                row = {"detector": name, "cell": cell, "seed": seed, "auroc": auroc(split.test_labels, scores),
                       "fit_s": rep.fit_seconds, "size_mb": artifact_mb(rep.artifact),
                       "wall_s": time.perf_counter() - start}
                if name == args.detector and seed == parse_seeds(args.seeds)[0] and cell == args.cells.split(",")[0]:
                    frames = [read_image(p) for p in split.test[: args.parity_frames]]
                    ref_s, ref_m, s, m, thr = reference_and_runtime(rep.artifact, frames)
                    par = parity(ref_s, ref_m, s, m, thr)
                    row.update({"max_rel_dscore": par.max_rel_score_diff, "max_dmap": par.max_map_diff,
                                "agree": par.decision_agreement, "max_abs_dscore": float(np.abs(s - ref_s).max())})
                    from anomedge.runtime.verify import verify_inspector

                    with Inspector(rep.artifact, "onnxruntime", threads=2) as insp:  # what ad-verify runs
                        v = verify_inspector(insp)
                    row["ad_verify"] = {"status": v.status, "max_rel_dscore": v.parity.max_rel_score_diff,
                                        "max_dmap": v.parity.max_map_diff, "n": v.parity.n}
                arts[name] = rep.artifact
                results["runs"].append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
            if seed == parse_seeds(args.seeds)[0] and cell == args.cells.split(",")[0] and args.runs:
                frames = [read_image(p) for p in split.test[:16]]
                results["latency_ms"] = {k: {"p50": v[0], "p99": v[1]}
                                         for k, v in interleaved_p50(arts, frames, args.runs).items()}
                print(json.dumps(results["latency_ms"]), file=sys.stderr, flush=True)
    return results


def splits_simplenet(args, params: dict) -> dict:
    """5 splits from one feature pass per cell: every cell image's frozen features are extracted once, then
    per seed the head is trained on that split's fit cells (the same 90 % ``fit_and_export`` fits on) and
    the split's test cells are scored from the cached features (torch; ``test`` checks the runtime)."""
    import torch

    from anomedge.scoring.postprocess import image_scores

    results = {"detectors": ["simplenet"], "params": params, "runs": [], "mode": "splits"}
    for cell in args.cells.split(","):
        det = build_detector("simplenet", params, args.progress)
        first = load_elpv(cell, seed=0)
        every = sorted({*first.train, *first.test})
        start = time.perf_counter()
        saved, det.views = det.views, ()
        feats = det.patches(every).reshape(len(every), *det.grid, -1)
        views = []
        for name in saved:  # augment: the views' features of every image too (only training rows are used)
            det.views = (name,)
            both = det.patches(every).reshape(2 * len(every), *det.grid, -1)
            views.append(both.reshape(-1, 2, *det.grid, both.shape[-1])[:, 1])
        det.views = saved
        index = {p: i for i, p in enumerate(every)}
        features_s = time.perf_counter() - start
        print(f"{cell}: features of {len(every)} images in {features_s:.0f} s", file=sys.stderr, flush=True)
        for seed in parse_seeds(args.seeds):
            split = load_elpv(cell, seed=seed)
            fit, _ = split_holdout(list(split.train), 0.1, 0)
            rows = torch.tensor([index[p] for p in fit])
            train = torch.cat([feats[rows], *[v[rows] for v in views]]).reshape(-1, feats.shape[-1])
            det.reset_head()
            start = time.perf_counter()
            det.fit_patches(train, len(fit))
            train_s = time.perf_counter() - start
            test = feats[torch.tensor([index[p] for p in split.test])]
            with torch.no_grad():
                patch = torch.nn.functional.softplus(-det.head.logits(det.head.adapt(test))).numpy()
            row = {"detector": "simplenet", "cell": cell, "seed": seed,
                   "auroc": auroc(split.test_labels, image_scores(patch, det.config.reduction)),
                   "by_reduction": {k: auroc(split.test_labels, image_scores(patch, r)) for k, r in
                                    (("max", {"name": "max"}),
                                     ("top5%", {"name": "top_fraction_mean", "fraction": 0.05}))},
                   "fit_s": train_s + features_s * len(fit) / len(every), "train_s": train_s, "size_mb": float("nan"),
                   "final_loss": det.history.epoch_loss[-1]}
            results["runs"].append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
        del feats, views
    return results


def summary(results: dict) -> str:
    lines = ["| detector | cell | image AUROC mean ± std | splits | fit s (mean) | artifact MB |", "|---|---|---|---|---|---|"]
    runs = results["runs"]
    for det in results["detectors"]:
        for cell in sorted({r["cell"] for r in runs}):
            rs = [r for r in runs if r["detector"] == det and r["cell"] == cell]
            if not rs:
                continue
            a = np.array([r["auroc"] for r in rs])
            lines.append(f"| {det} | {cell} | {a.mean():.4f} ± {a.std(ddof=1) if len(a) > 1 else 0:.4f} | "
                         f"{', '.join(f'{v:.4f}' for v in a)} | {np.mean([r['fit_s'] for r in rs]):.1f} | "
                         f"{rs[0]['size_mb']:.2f} |")
    if "latency_ms" in results:
        lines.append("")
        lines.append("runtime (onnxruntime, batch 1, 2 threads, interleaved): " + ", ".join(
            f"{k} p50 {v['p50']:.1f} ms / p99 {v['p99']:.1f} ms" for k, v in results["latency_ms"].items()))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["val", "test", "splits"])
    ap.add_argument("--detector", default="simplenet")
    ap.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--grid", action="append", default=[], metavar="KEY=V1;V2", help="val: values to sweep")
    ap.add_argument("--cells", default="mono,poly")
    ap.add_argument("--seeds", default="0", help="test: e.g. 0-4 or 0,2")
    ap.add_argument("--compare", default="", help="test: comma list of detectors run on the same splits (defaults)")
    ap.add_argument("--runs", type=int, default=40, help="test: timed frames per artifact (interleaved)")
    ap.add_argument("--parity-frames", type=int, default=16)
    ap.add_argument("--json", default="")
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)
    args.compare = [c for c in args.compare.split(",") if c]
    params = parse_params(args.param)
    progress = True if args.progress else False
    with tempfile.TemporaryDirectory(prefix="learned_") as tmp:
        work = Path(tmp)
        if args.mode == "val":
            grid = [{**params, **g} for g in parse_grid(args.grid)]
            rows = []
            for cell in args.cells.split(","):
                fit, val, labels = validation_set(cell, work)
                if args.detector == "simplenet":
                    rows += val_simplenet(grid, cell, fit, val, labels, progress)
                else:
                    rows += val_generic(args.detector, grid, cell, fit, val, labels, work, progress)
            results = {"mode": "val", "detector": args.detector, "rows": rows}
            print("| params | cell | val AUROC |\n|---|---|---|")
            for r in rows:
                print(f"| {json.dumps(r['params'])} | {r['cell']} | {r['val_auroc']:.4f} |")
        elif args.mode == "splits":
            args.progress = progress
            results = splits_simplenet(args, params)
            print(summary(results))
        else:
            args.progress = progress
            results = test_mode(args, params, work)
            print(summary(results))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
