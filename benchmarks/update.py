"""ad-update vs a full refit on the union, on ELPV (issue 17.2): time saved and image AUROC both ways.

Protocol, per detector (defaults of each: 224 px, EfficientNet-Lite0; PatchCore 1 % coreset):
- the ELPV training cells are split (seeded) into halves A and B;
- base = ``ad-export`` on A (its usual 10 % holdout → A_fit);
- update = ``update_artifact(base, B)`` (10 % of B held out for the threshold → B_fit added): timed;
- refit = ``fit_and_export(A_fit ∪ B_fit, holdout=0)``: the same training images from scratch, timed
  (no threshold step, so the comparison favours the refit);
- both scored on the test cells through onnxruntime: image AUROC; PaDiM also max |Δ| of the arrays and the
  scores (identical up to float32 rounding is the claim).

    python benchmarks/update.py [--cells mono] [--detectors padim,patchcore] [--work DIR]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def score_all(artifact, paths) -> np.ndarray:
    from anomedge.runtime.imageio import read_image
    from anomedge.runtime.pipeline import Inspector

    with Inspector(artifact, "onnxruntime") as inspector:
        return np.concatenate([inspector.inspect([read_image(p)]).scores for p in paths])


def run(detector: str, split, work: Path) -> dict:
    from anomedge.calibrate.metrics import auroc
    from anomedge.export.fit import fit_and_export, split_holdout
    from anomedge.update.apply import update_artifact

    train = list(split.train)
    order = np.random.default_rng(1).permutation(len(train))
    half = len(train) // 2
    a = [train[i] for i in sorted(order[:half])]
    b = [train[i] for i in sorted(order[half:])]
    a_fit = split_holdout(a, 0.1)[0]
    b_fit = split_holdout(b, 0.1)[0]
    t = time.perf_counter()
    base = fit_and_export(a, detector, {}, work / f"{detector}-base", progress=False).artifact
    t_base = time.perf_counter() - t
    t = time.perf_counter()
    report = update_artifact(base.root, b, work / f"{detector}-update", progress=False)
    t_update = time.perf_counter() - t
    t = time.perf_counter()
    refit = fit_and_export([*a_fit, *b_fit], detector, {}, work / f"{detector}-refit", holdout=0.0,
                           progress=False).artifact
    t_refit = time.perf_counter() - t
    test, labels = list(split.test), np.asarray(split.test_labels)
    s_update, s_refit, s_base = (score_all(x, test) for x in (report.artifact, refit, base))
    row = {"detector": detector, "n_a": len(a), "n_b": len(b), "n_added": report.n_added,
           "base_s": t_base, "update_s": t_update, "refit_s": t_refit,
           "auroc_base": auroc(labels, s_base), "auroc_update": auroc(labels, s_update),
           "auroc_refit": auroc(labels, s_refit),
           "max_rel_score_diff": float(np.max(np.abs(s_update - s_refit) / np.abs(s_refit)))}
    if detector == "patchcore":
        row["bank"] = f"{base.metadata.scoring['bank_rows']} → {report.artifact.metadata.scoring['bank_rows']} " \
                      f"(refit {refit.metadata.scoring['bank_rows']})"
    else:
        row["max_abs_factor_diff"] = float(np.abs(report.artifact.array("factor.npy").astype(np.float64)
                                                  - refit.array("factor.npy")).max())
        row["bank"] = "-"
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", default="mono")
    parser.add_argument("--detectors", default="padim,patchcore")
    parser.add_argument("--work", default=None, help="folder for the artifacts (default: a temp folder, removed)")
    args = parser.parse_args()
    from anomedge.datasets import load_dataset

    split = load_dataset(f"elpv:{args.cells}")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="anomedge-update-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for detector in args.detectors.split(","):
            rows.append(run(detector, split, work))
            print(rows[-1], flush=True)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\nELPV {args.cells}: train split into A / B halves; test {len(split.test)} cells\n")
    print("| detector | A / B images (B added) | update s | refit on A∪B s | time saved | AUROC base (A) | "
          "AUROC update | AUROC refit | max rel Δscore update vs refit | bank rows |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['detector']} | {r['n_a']} / {r['n_b']} ({r['n_added']}) | {r['update_s']:.1f} | {r['refit_s']:.1f} | "
              f"{r['refit_s'] / r['update_s']:.1f}× | {r['auroc_base']:.4f} | {r['auroc_update']:.4f} | "
              f"{r['auroc_refit']:.4f} | {r['max_rel_score_diff']:.1e} | {r['bank']} |")


if __name__ == "__main__":
    main()
