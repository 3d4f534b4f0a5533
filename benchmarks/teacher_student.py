"""Teacher–student detector on ELPV: model choice on good images only, then the 5-split measurement.

``--select``: for each candidate config, fit on 80 % of split 0's good training cells and score, in torch,
the other 20 % (held-out good) against copies of them with one drawn defect each
(``datasets.synthetic.DRAWERS``: scratch, spot, crack, missing piece) → "selection AUROC". The ELPV test
set is not read in this mode.
default: the chosen config (``--params`` JSON, default: the detector's defaults) through the exported
artifact: ``fit_and_export`` on each split's good training cells (seeds ``--seeds``), every test cell
scored on onnxruntime (host scoring, 2 threads) → image AUROC per split, mean ± std; fit seconds,
artifact MB; on split 0 also runtime p50 (batch 1) of this artifact and of a PatchCore artifact fitted on
the same cells, timed interleaved in one loop (machine shared: only the ratio is meaningful), and
parity vs the PyTorch reference.

    nice -n 5 .venv/bin/python benchmarks/teacher_student.py --select --cells mono
    nice -n 5 .venv/bin/python benchmarks/teacher_student.py --cells mono,poly --seeds 0,1,2,3,4
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from anomedge.calibrate.metrics import auroc  # noqa: E402
from anomedge.datasets.elpv import load_elpv  # noqa: E402

FAST = {"amp": "bf16", "threads": 2}
CANDIDATES: dict[str, dict] = {
    "e10": {**FAST, "epochs": 10},
    "e10_mse": {**FAST, "epochs": 10, "hard_quantile": 0.0},
    "e20": {**FAST, "epochs": 20},
    "e10_lr3e-3": {**FAST, "epochs": 10, "lr": 3e-3},
    "e10_d2": {**FAST, "epochs": 10, "depth": 2},
    "e10_agg3": {**FAST, "epochs": 10, "aggregation": 3},
    "e10_w128": {**FAST, "epochs": 10, "widths": [128]},
    "e10_image": {**FAST, "epochs": 10, "input_stage": None, "widths": [32, 64, 128]},
}


def teacher_key(params: dict) -> str:
    return json.dumps({k: params.get(k) for k in ("backbone", "aggregation", "input_stage", "image_size",
                                                  "flip_augment", "val_fraction", "seed")}, sort_keys=True)


# ---- model choice on good images + synthetic defects -------------------------------------------------------

class _Canvas:
    def __init__(self, size: int):
        self.size = size


def defect_copies(paths, seed: int = 0):
    """(clean frames, defective frames) uint8 gray: each held-out good cell, and it with one drawn defect."""
    import cv2

    from anomedge.datasets.synthetic import DEFECTS, DRAWERS, _apply

    clean, bad = [], []
    for i, p in enumerate(paths):
        img = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
        side = min(img.shape)
        img = np.ascontiguousarray(img[:side, :side])
        rng = np.random.default_rng([seed, zlib.crc32(p.name.encode())])
        mask, delta = DRAWERS[DEFECTS[i % len(DEFECTS)]](img, rng, _Canvas(side))
        clean.append(img)
        bad.append(_apply(img, mask, delta))
    return clean, bad


def torch_scores(detector, frames, reduction):
    """Image scores of ``frames`` through the detector's torch graph and the runtime's reduction."""
    import torch

    from anomedge.runtime.preprocess import preprocess
    from anomedge.scoring.postprocess import image_scores

    spec = detector.input_spec()
    out = []
    with torch.inference_mode():
        for i in range(0, len(frames), 16):
            x = torch.from_numpy(preprocess(frames[i:i + 16], spec))
            out.append(detector.graph()(x)[:, 0].numpy())
    maps = np.concatenate(out)
    return {name: image_scores(maps, red) for name, red in reduction.items()}


def select(cells, names, epochs_override=None) -> list[dict]:
    from anomedge.models.teacher_student import TeacherStudent, TeacherStudentConfig

    reductions = {"max": {"name": "max"}, "top1%": {"name": "top_fraction_mean", "fraction": 0.01},
                  "top5%": {"name": "top_fraction_mean", "fraction": 0.05}}
    rows = []
    for cell in cells:
        split = load_elpv(cell, seed=0)
        order = np.random.default_rng(123).permutation(len(split.train))
        n_sel = len(order) // 5
        held = [split.train[i] for i in sorted(order[:n_sel])]
        fit = [split.train[i] for i in sorted(order[n_sel:])]
        clean, bad = defect_copies(held)
        labels = np.r_[np.zeros(len(clean)), np.ones(len(bad))]
        cache: dict[str, tuple] = {}
        for name in names:
            params = dict(CANDIDATES[name])
            start = time.perf_counter()
            det = TeacherStudent(TeacherStudentConfig(**params), progress=False)
            key = teacher_key(params)
            if key not in cache:  # the frozen teacher's features are the same for every student config
                cache[key] = det._teacher_raw(det.split(fit)[0])
            det._teacher_raw = lambda paths, key=key: cache[key]
            det.fit(fit)
            seconds = time.perf_counter() - start
            scores = torch_scores(det, clean + bad, reductions)
            row = {"cell": cell, "config": name, "params": params, "fit_s": round(seconds, 1),
                   "final_loss": det.history.epoch_loss[-1],
                   **{f"sel_auroc_{k}": round(auroc(labels, v), 4) for k, v in scores.items()}}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


# ---- the measurement through the exported artifact ---------------------------------------------------------

def artifact_mb(artifact) -> float:
    return sum((artifact.root / f).stat().st_size for f in artifact.metadata.files) / 2**20


def ort_scores(artifact, paths, batch: int = 8) -> np.ndarray:
    from anomedge.runtime.pipeline import Inspector
    from anomedge.runtime.preprocess import read_image

    with Inspector(artifact, "onnxruntime", threads=2) as insp:
        return np.concatenate([insp.inspect([read_image(p) for p in paths[i:i + batch]]).scores
                               for i in range(0, len(paths), batch)])


def interleaved_p50(artifacts: dict, frames, runs: int) -> dict[str, dict[str, float]]:
    """Batch-1 end-to-end latency of each artifact on onnxruntime (2 threads), strictly alternating
    frame by frame so that both see the same machine load."""
    from anomedge.runtime.pipeline import Inspector

    inspectors = {k: Inspector(a, "onnxruntime", threads=2).__enter__() for k, a in artifacts.items()}
    times = {k: [] for k in artifacts}
    try:
        for i in range(runs + 5):
            for k, insp in inspectors.items():
                start = time.perf_counter()
                insp.inspect([frames[i % len(frames)]])
                if i >= 5:
                    times[k].append((time.perf_counter() - start) * 1e3)
    finally:
        for insp in inspectors.values():
            insp.__exit__(None, None, None)
    return {k: {"p50_ms": float(np.median(v)), "p99_ms": float(np.percentile(v, 99)), "min_ms": float(np.min(v))}
            for k, v in times.items()}


def measure(cells, seeds, params, work: Path, runs: int, out_json: str) -> dict:
    from anomedge.benchmark import parity, reference_and_runtime
    from anomedge.export.fit import fit_and_export
    from anomedge.runtime.preprocess import read_image

    result = {"params": params, "splits": []}
    plan = [(c, s) for s in seeds for c in cells]  # every cell's split 0 first: a cut-short run keeps both
    for cell, seed in plan:
        split = load_elpv(cell, seed=seed)
        out = work / f"{cell}-{seed}"
        report = fit_and_export(split.train, "teacher_student", params, out, progress=False)
        scores = ort_scores(report.artifact, list(split.test))
        row = {"cell": cell, "seed": seed, "auroc": auroc(split.test_labels, scores), "fit_s": report.fit_seconds,
               "size_mb": artifact_mb(report.artifact), "n_fit": report.n_fit,
               "fit_detail": report.artifact.metadata.model["fit"]["seconds"]}
        if seed == seeds[0] and cell == cells[0]:
            frames = [read_image(p) for p in split.test[:16]]
            p = parity(*reference_and_runtime(report.artifact, frames[:8]))
            row["parity"] = {"max_rel_dscore": p.max_rel_score_diff, "max_dmap": p.max_map_diff,
                             "agree": p.decision_agreement}
            pc = fit_and_export(split.train, "patchcore", {}, work / f"patchcore-{cell}-{seed}", progress=False)
            row["patchcore"] = {"auroc": auroc(split.test_labels, ort_scores(pc.artifact, list(split.test))),
                                "fit_s": pc.fit_seconds, "size_mb": artifact_mb(pc.artifact)}
            row["latency"] = interleaved_p50({"teacher_student": report.artifact, "patchcore": pc.artifact}, frames, runs)
        print(json.dumps(row), flush=True)
        result["splits"].append(row)
        result["summary"] = summary(result["splits"])
        Path(out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(out_json).write_text(json.dumps(result, indent=1))
    return result


def summary(rows) -> dict:
    out = {}
    for cell in sorted({r["cell"] for r in rows}):
        a = np.array([r["auroc"] for r in rows if r["cell"] == cell])
        out[cell] = {"n_splits": int(a.size), "mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else 0.0,
                     "per_split": [round(float(v), 4) for v in a]}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--select", action="store_true", help="model choice on held-out good + synthetic defects")
    ap.add_argument("--configs", default="", help="comma list of CANDIDATES names (--select; default all)")
    ap.add_argument("--cells", default="mono,poly")
    ap.add_argument("--json", default="")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--params", default="{}", help="teacher_student parameters (JSON)")
    ap.add_argument("--runs", type=int, default=60, help="timed frames per artifact (interleaved)")
    ap.add_argument("--keep", default="", help="keep the artifacts here (default: a temporary folder)")
    args = ap.parse_args(argv)
    cells = [c for c in args.cells.split(",") if c]
    if args.select:
        names = [c for c in args.configs.split(",") if c] or list(CANDIDATES)
        rows = select(cells, names)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
        return 0
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="teacher_student_"))
    seeds = [int(s) for s in args.seeds.split(",") if s]
    result = measure(cells, seeds, json.loads(args.params), work, args.runs, args.json or "runs/teacher_student.json")
    print(json.dumps(result["summary"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
