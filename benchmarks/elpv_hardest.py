"""The ELPV cells an artifact gets most wrong, as one figure: the certainly-defective test cells (expert
rating 1.0) with the lowest scores next to the good test cells with the highest.

    python benchmarks/elpv_hardest.py ARTIFACT --cell mono --seed 0 --out docs/img/elpv_hardest.png

Prints how many rated-1.0 cells score below the q0.95 of the good test cells (the misses no threshold
can fix without 5 % false alarms). Scores through the artifact on onnxruntime, as ``elpv_splits``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from anomedge.artifact import Artifact  # noqa: E402
from anomedge.datasets.elpv import load_elpv  # noqa: E402
from elpv_splits import ratings, score_test  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact")
    ap.add_argument("--cell", default="mono")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n", type=int, default=8, help="cells per row")
    ap.add_argument("--out", default="runs/elpv_hardest.png")
    args = ap.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    split = load_elpv(args.cell, seed=args.seed)
    scores = score_test(Artifact.load(args.artifact), list(split.test))
    good = np.flatnonzero(split.test_labels == 0)
    certain = np.flatnonzero(np.array([ratings()[p] for p in split.test]) == 1.0)
    q95 = float(np.quantile(scores[good], 0.95))
    below = int((scores[certain] < q95).sum())
    print(f"{args.cell} seed {args.seed}: {below} of {len(certain)} cells rated 1.0 score below the q0.95 of the "
          f"{len(good)} good test cells ({q95:.3f})")
    rows = {"rated defective (1.0)\nlowest scores": certain[np.argsort(scores[certain])][:args.n],
            "good\nhighest scores": good[np.argsort(-scores[good])][:args.n]}
    fig, axes = plt.subplots(2, args.n, figsize=(1.6 * args.n, 4.0))
    for r, (title, picks) in enumerate(rows.items()):
        for c, i in enumerate(picks):
            ax = axes[r, c]
            ax.imshow(cv2.imread(str(split.test[i]), cv2.IMREAD_GRAYSCALE), cmap="gray", vmin=0, vmax=255)
            ax.set_title(f"{split.test[i].stem}\nscore {scores[i]:.2f}", fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(title, fontsize=8)
    fig.suptitle(f"ELPV {args.cell} test cells (split {args.seed}), {Path(args.artifact).name}: {below} of "
                 f"{len(certain)} cells rated 1.0 score below the good cells' q0.95", fontsize=9)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=90, bbox_inches="tight")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
