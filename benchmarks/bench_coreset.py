"""Fast exact greedy coreset vs the naive one-GEMV-per-pick loop (PatchCore's sampler).

    .venv/bin/python benchmarks/bench_coreset.py [--n 277000] [--dim 152] [--fraction 0.1]
        [--naive-picks 300] [--small 20000] [--threads 2]

Large size (ELPV-mono's 277k patches × 152-d, 10 %): the fast path runs fully; the naive float32
loop is timed for ``--naive-picks`` picks and extrapolated linearly (each pick costs the same:
one GEMV over all points), and its first picks are compared with the fast ones.
Small size: both run fully and the whole index sequences are compared, also with the float64
reference loop. Random Gaussian features (seeded); prints a markdown table.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from anomedge.models.coreset import greedy_coreset, greedy_coreset_naive


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=277_000, help="points (default: ELPV-mono patch count)")
    ap.add_argument("--dim", type=int, default=152)
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--naive-picks", type=int, default=300, help="naive picks timed at the large size")
    ap.add_argument("--small", type=int, default=20_000, help="points of the fully compared small run")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    rows = []

    feats = rng.standard_normal((args.small, args.dim)).astype(np.float32)
    count = int(round(args.small * args.fraction))
    fast, t_fast = timed(lambda: greedy_coreset(feats, n=count))
    naive, t_naive = timed(lambda: greedy_coreset_naive(feats, n=count, dtype=torch.float32))
    ref64 = greedy_coreset_naive(feats, n=count)
    rows.append((f"{args.small:,} × {args.dim} → {count:,}", f"{t_fast:.2f}", f"{t_naive:.2f} (full run)",
                 f"{t_naive / t_fast:.1f}×", f"{np.mean(fast == naive) * 100:.2f} % / {np.mean(fast == ref64) * 100:.2f} %"))

    feats = rng.standard_normal((args.n, args.dim)).astype(np.float32)
    count = int(round(args.n * args.fraction))
    fast, t_fast = timed(lambda: greedy_coreset(feats, n=count))
    picks = min(args.naive_picks, count)
    naive, t_part = timed(lambda: greedy_coreset_naive(feats, n=count, dtype=torch.float32, max_picks=picks))
    t_naive = t_part / picks * count
    rows.append((f"{args.n:,} × {args.dim} → {count:,}", f"{t_fast:.2f}",
                 f"{t_naive:.0f} (extrapolated from {picks} picks in {t_part:.1f} s)", f"{t_naive / t_fast:.0f}×",
                 f"first {picks}: {np.mean(fast[:picks] == naive) * 100:.2f} %"))

    print(f"greedy k-center coreset, projection 152 → 128, {args.threads} threads (torch {torch.__version__})\n")
    print("| features → picks | fast (s) | naive float32 GEMV loop (s) | speed-up | same indices (vs naive f32 / vs float64 ref) |")
    print("|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
