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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--select", action="store_true", help="model choice on held-out good + synthetic defects")
    ap.add_argument("--configs", default="", help="comma list of CANDIDATES names (--select; default all)")
    ap.add_argument("--cells", default="mono,poly")
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)
    cells = [c for c in args.cells.split(",") if c]
    if args.select:
        names = [c for c in args.configs.split(",") if c] or list(CANDIDATES)
        rows = select(cells, names)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
