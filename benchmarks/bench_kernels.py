"""Fused scoring kernels vs naive numpy vs faiss, on PatchCore / PaDiM shapes.

    .venv/bin/python benchmarks/bench_kernels.py [--runs 20] [--threads 2] [--k 1]

kNN: P = 784 query patches (one 224×224 image at stride 8), D = 152, banks of M = 2,770 (1 %
coreset of ELPV-mono's 277k patches) and 27,700 (10 %) rows; KnnIndex with a float32 and a
float16 bank, the naive full-matrix numpy expression, faiss IndexFlatL2 (exact). Mahalanobis:
P = 784 and 3,136 positions, C = 100, one image: MahalanobisIndex (float32 / float16 factor) vs
the naive per-position loop (x − μ)ᵀ Σ⁻¹ (x − μ). Median (and min) of ``--runs`` timed calls after
one warm-up, BLAS/OpenMP limited to ``--threads``. Random Gaussian data; prints markdown tables.
OPENBLAS_CORETYPE is left as set in the environment.
"""

from __future__ import annotations

import argparse

import numpy as np
from threadpoolctl import threadpool_limits

from anomedge.scoring.kernels import KnnIndex, MahalanobisIndex, inverse_cov_factor


from anomedge.benchmark import timed as bench  # noqa: E402  (median, min) ms


def naive_knn(queries: np.ndarray, bank: np.ndarray, k: int) -> np.ndarray:
    d2 = (queries * queries).sum(1)[:, None] + (bank * bank).sum(1)[None, :] - 2.0 * queries @ bank.T
    d2 = np.partition(d2, k - 1, axis=1)[:, :k] if k > 1 else d2.min(1, keepdims=True)
    return np.sqrt(np.maximum(np.sort(d2, axis=1), 0.0))


def knn_table(runs: int, threads: int, k: int) -> None:
    rng = np.random.default_rng(0)
    p, d = 784, 152
    queries = rng.standard_normal((p, d)).astype(np.float32)
    try:
        import faiss

        faiss.omp_set_num_threads(threads)
    except ImportError:
        faiss = None
    print(f"kNN k={k}, P={p} queries, D={d}, {threads} threads; ms per image (median / min of {runs})\n")
    print("| bank rows M | fused f32 | fused f16 | naive numpy | faiss IndexFlatL2 | naive ÷ fused f32 | faiss ÷ fused f32 | max rel err f32 / f16 (vs f32 bank) |")
    print("|---|---|---|---|---|---|---|---|")
    for m in (2_770, 27_700):
        bank = rng.standard_normal((m, d)).astype(np.float32)
        f32, f16 = KnnIndex(bank), KnnIndex(bank.astype(np.float16))
        cols = {
            "f32": bench(lambda: f32.search(queries, k), runs),
            "f16": bench(lambda: f16.search(queries, k), runs),
            "naive": bench(lambda: naive_knn(queries, bank, k), runs),
        }
        if faiss is not None:
            flat = faiss.IndexFlatL2(d)
            flat.add(bank)
            cols["faiss"] = bench(lambda: flat.search(queries, k), runs)
        ref = naive_knn(queries.astype(np.float64), bank.astype(np.float64), k)
        err32 = np.abs(f32.search(queries, k) - ref).max() / ref.max()
        err16 = np.abs(f16.search(queries, k) - ref).max() / ref.max()
        fmt = lambda key: f"{cols[key][0]:.2f} / {cols[key][1]:.2f}" if key in cols else "n/a"
        faiss_ratio = f"{cols['faiss'][0] / cols['f32'][0]:.1f}×" if "faiss" in cols else "n/a"
        print(f"| {m:,} | {fmt('f32')} | {fmt('f16')} | {fmt('naive')} | {fmt('faiss')} | "
              f"{cols['naive'][0] / cols['f32'][0]:.1f}× | {faiss_ratio} | {err32:.1e} / {err16:.1e} |")
    print()


def naive_mahalanobis(x: np.ndarray, mean: np.ndarray, inv_cov: np.ndarray) -> np.ndarray:
    out = np.empty(x.shape[:2], np.float32)
    for i in range(mean.shape[0]):
        diff = x[:, i] - mean[i]
        out[:, i] = np.einsum("nc,cd,nd->n", diff, inv_cov[i], diff)
    return out


def mahalanobis_table(runs: int, threads: int) -> None:
    rng = np.random.default_rng(1)
    c = 100
    print(f"Mahalanobis, C={c}, one image (N=1), {threads} threads; ms (median / min of {runs})\n")
    print("| positions P | fused f32 factor | fused f16 factor | naive per-position loop | naive ÷ fused f32 | max rel err f32 / f16 |")
    print("|---|---|---|---|---|---|")
    for p in (784, 3_136):
        a = rng.standard_normal((p, c, 2 * c)).astype(np.float32)
        cov = a @ a.transpose(0, 2, 1) / (2 * c) + 0.01 * np.eye(c, dtype=np.float32)
        inv_cov = np.linalg.inv(cov)
        mean = rng.standard_normal((p, c)).astype(np.float32)
        x = (mean + rng.standard_normal((1, p, c))).astype(np.float32)
        f32 = MahalanobisIndex(mean, inverse_cov_factor(cov))
        f16 = MahalanobisIndex(mean, inverse_cov_factor(cov, dtype=np.float16))
        t32, t16 = bench(lambda: f32.score(x), runs), bench(lambda: f16.score(x), runs)
        tn = bench(lambda: naive_mahalanobis(x, mean, inv_cov), max(3, runs // 4))
        ref = naive_mahalanobis(x.astype(np.float64), mean.astype(np.float64), np.linalg.inv(cov.astype(np.float64)))
        e32 = np.abs(f32.score(x) - ref).max() / np.abs(ref).max()
        e16 = np.abs(f16.score(x) - ref).max() / np.abs(ref).max()
        print(f"| {p:,} | {t32[0]:.2f} / {t32[1]:.2f} | {t16[0]:.2f} / {t16[1]:.2f} | {tn[0]:.2f} / {tn[1]:.2f} | "
              f"{tn[0] / t32[0]:.0f}× | {e32:.1e} / {e16:.1e} |")
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--k", type=int, default=1)
    args = ap.parse_args()
    with threadpool_limits(limits=args.threads):
        knn_table(args.runs, args.threads, args.k)
        mahalanobis_table(args.runs, args.threads)


if __name__ == "__main__":
    main()
