"""Exact kNN cost vs bank size on real ELPV-mono PatchCore features, and the kernel's rate vs the machine's sgemm.

    .venv/bin/python benchmarks/knn_growth.py [--threads 2] [--runs 7] [--runs-full 3] [--plot docs/img/knn_growth.png]

Features: the default PatchCore graph (EfficientNet-Lite0, blocks 2 + 4, 224 px, D = 152) on the 353 ELPV-mono
training cells = 276,752 patches; queries = one good and one defective test cell (784 patches each), used in
turn. Extracted once with torch and cached (``--cache``, default /tmp/anomedge-knn-growth); later runs need
no torch. Banks: seeded random subsets of 1 %, 10 % and 100 % of the patches (the same rows every run).

Strictly interleaved: each round runs one search of every kernel at every bank size: ``blocked`` (knn_exact, brute force),
``pruned`` (knn_pruned), the existing fused ``numpy`` kernel (1 % / 10 % only) and faiss ``IndexFlatL2``;
p50 / min ms of one frame (784 queries, k = 1) and GFLOP/s as 2·P·M·D / time. The machine's sgemm rate
is measured in the same run: a 2048³ square product and the kNN's own shape, (784,152)·(152,M) in
2,048-column blocks into a preallocated output. Also checked: pruned == blocked (indices and distances,
bit for bit) and faiss's agreement with them. Prints markdown; writes the curve as a PNG.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from anomedge.benchmark import sgemm_rate
from anomedge.scoring.kernels import KnnIndex
from anomedge.scoring.knn_exact import BlockedKnnIndex
from anomedge.scoring.knn_pruned import PrunedKnnIndex

FRACTIONS = (0.01, 0.1, 1.0)


def features(cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """(276752,152) float32 training patches, (2,784,152) float32 queries (one good, one defective cell)."""
    bank_file, query_file = cache / "elpv_mono_train.npy", cache / "elpv_mono_queries.npy"
    if not (bank_file.is_file() and query_file.is_file()):
        from anomedge.datasets.elpv import load_elpv
        from anomedge.models.features import extract
        from anomedge.models.patchcore import PatchCore

        print(f"extracting ELPV-mono PatchCore features into {cache} (once; needs torch) …", file=sys.stderr)
        split, model = load_elpv("mono"), PatchCore(progress=None)
        feats = extract(model.graph(), split.train, model.input_spec(), 16, None)
        n, d, h, w = feats.shape
        cache.mkdir(parents=True, exist_ok=True)
        np.save(bank_file, np.ascontiguousarray(feats.transpose(0, 2, 3, 1).reshape(-1, d)))
        labels = np.asarray(split.test_labels)
        pick = [split.test[int(np.flatnonzero(labels == 0)[0])], split.test[int(np.flatnonzero(labels == 1)[0])]]
        q = extract(model.graph(), pick, model.input_spec(), 2, False)
        np.save(query_file, np.ascontiguousarray(q.transpose(0, 2, 3, 1).reshape(2, h * w, d)))
    return np.load(bank_file), np.load(query_file)


def shape_sgemm(queries: np.ndarray, bank: np.ndarray, block: int = 2048):
    """The kNN's GEMM alone: (P,D)·(D,M) by 2,048-column blocks into one preallocated block."""
    bank_t = np.ascontiguousarray(bank.T)
    out = np.empty(len(queries) * block, np.float32)

    def run():
        for s in range(0, bank_t.shape[1], block):
            b = bank_t[:, s:s + block]
            np.dot(queries, b, out=out[: len(queries) * b.shape[1]].reshape(len(queries), b.shape[1]))
    return run


def bank_rows(total: int, fraction: float) -> np.ndarray:
    m = int(round(total * fraction))
    return np.arange(total) if m >= total else np.sort(np.random.default_rng(0).permutation(total)[:m])


class Bank:
    """One bank size: its kernels built, the timed calls (frame index → search), the laps recorded."""

    def __init__(self, fraction: float, bank: np.ndarray, queries: list[np.ndarray], runs: int, threads: int):
        self.fraction, self.bank, self.queries, self.runs = fraction, bank, queries, runs
        self.built, self.builds = {}, {}
        for name, make in [("blocked", BlockedKnnIndex), ("pruned", PrunedKnnIndex)] + (
                [("numpy", KnnIndex)] if fraction < 1 else []):
            start = time.perf_counter()
            self.built[name] = make(bank)
            self.builds[name] = time.perf_counter() - start
        self.fns = {name: (lambda i, x=index: x.search_with_index(queries[i], 1)) for name, index in self.built.items()}
        self.flat = None
        try:
            import faiss

            faiss.omp_set_num_threads(threads)
            self.flat = faiss.IndexFlatL2(bank.shape[1])
            self.flat.add(bank)
            self.fns["faiss"] = lambda i: self.flat.search(queries[i], 1)
        except ImportError:
            pass
        gemm = [shape_sgemm(q, bank) for q in queries]
        self.fns["sgemm (kNN shape)"] = lambda i: gemm[i]()
        self.laps = {name: [] for name in self.fns}
        for i in range(len(queries)):  # warm-up
            for fn in self.fns.values():
                fn(i)

    def round(self, r: int) -> None:
        """One search of every kernel on frame r mod 2 (skipped past this bank's ``runs``)."""
        if r >= self.runs:
            return
        for name, fn in self.fns.items():
            start = time.perf_counter()
            fn(r % len(self.queries))
            self.laps[name].append((time.perf_counter() - start) * 1e3)

    def result(self) -> dict:
        blocked, pruned = self.built["blocked"], self.built["pruned"]
        same = all(np.array_equal(a, b) for q in self.queries
                   for a, b in zip(blocked.search_with_index(q, 1), pruned.search_with_index(q, 1)))
        faiss_agree = None
        if self.flat is not None:
            faiss_agree = float(np.mean([np.mean(self.flat.search(q, 1)[1] == blocked.search_with_index(q, 1)[1])
                                         for q in self.queries]))
        pruned.search_with_index(self.queries[0], 1)
        touched = pruned.touched / (len(self.queries[0]) * len(self.bank))
        return {"fraction": self.fraction, "rows": len(self.bank),
                "ms": {k: (float(np.median(v)), float(np.min(v))) for k, v in self.laps.items()},
                "build_s": self.builds, "same": same, "faiss_agree": faiss_agree, "touched": touched,
                "clusters": pruned.clusters}


def plot(results: list[dict], path: Path, machine: str, threads: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = np.array([r["rows"] for r in results])
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for name, style in [("blocked", "o-"), ("faiss", "s--"), ("pruned", "^-")]:
        if all(name in r["ms"] for r in results):
            ax.plot(rows, [r["ms"][name][0] for r in results], style, label=name)
    base = results[0]["ms"]["blocked"][0]
    ax.plot(rows, base * rows / rows[0], ":", color="grey", label="linear (from blocked at 1 %)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("bank rows M (ELPV mono PatchCore patches, D = 152)")
    ax.set_ylabel("p50 ms per frame (784 queries, k = 1)")
    ax.set_title(f"Exact kNN cost vs bank size\n{machine}, {threads} BLAS thread(s)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=8, help="interleaved rounds at 1 % and 10 %")
    ap.add_argument("--runs-full", type=int, default=3, help="interleaved rounds at 100 %")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/anomedge-knn-growth"))
    ap.add_argument("--plot", type=Path, default=Path("docs/img/knn_growth.png"))
    ap.add_argument("--machine", default=None, help="machine name for the plot title (default: the CPU model)")
    args = ap.parse_args()
    from anomedge.runtime.kernel_race import cpu_name

    machine = args.machine or cpu_name()
    train, queries = features(args.cache)
    with threadpool_limits(limits=args.threads):
        square = sgemm_rate()
        banks = [Bank(f, np.ascontiguousarray(train[bank_rows(len(train), f)]), list(queries),
                      args.runs if f < 1 else args.runs_full, args.threads) for f in FRACTIONS]
        print("  kernels built; timing (every bank and kernel in each round) …", file=sys.stderr)
        for r in range(max(b.runs for b in banks)):  # interleaved across bank sizes too: the growth is a ratio
            for b in banks:
                b.round(r)
        results = [b.result() for b in banks]
        square_after = sgemm_rate()
    p, d = queries.shape[1], queries.shape[2]
    print(f"Machine: {machine}; {args.threads} BLAS/faiss threads; numpy {np.__version__}.")
    print(f"sgemm rate (float32 2048³, best of 5, before / after): {square:.1f} / {square_after:.1f} GFLOP/s\n")
    names = [n for n in ("blocked", "pruned", "numpy", "faiss", "sgemm (kNN shape)") if n in results[0]["ms"]]
    head = ["bank", "rows M"] + [f"{n} p50 / min ms" for n in names] + [
        "blocked GFLOP/s (% of kNN-shape sgemm / % of square sgemm)", "pruned: full-distance pairs", "pruned == blocked",
        "faiss agrees", "pruned build s"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in results:
        flops = 2.0 * p * r["rows"] * d
        ms = r["ms"]
        rate = flops / (ms["blocked"][0] * 1e6)
        cells = [f"{r['fraction']:.0%}", f"{r['rows']:,}"]
        cells += [f"{ms[n][0]:.1f} / {ms[n][1]:.1f}" if n in ms else "–" for n in names]
        cells += [f"{rate:.1f} ({100 * ms['sgemm (kNN shape)'][0] / ms['blocked'][0]:.0f} % / {100 * rate / square:.0f} %)",
                  f"{100 * r['touched']:.1f} % ({r['clusters']} clusters)", "yes" if r["same"] else "NO",
                  "–" if r["faiss_agree"] is None else f"{100 * r['faiss_agree']:.2f} %", f"{r['build_s']['pruned']:.1f}"]
        print("| " + " | ".join(cells) + " |")
    t = {n: [r["ms"][n][0] for r in results] for n in ("blocked", "pruned")}
    best1 = min(results[0]["ms"][n][0] for n in results[0]["ms"] if n != "sgemm (kNN shape)")
    print(f"\nGrowth, p50 ratio to 1 %: pruned 10 % = {t['pruned'][1] / t['pruned'][0]:.1f}× (vs the fastest kernel at 1 %: "
          f"{t['pruned'][1] / best1:.1f}×), 100 % = {t['pruned'][2] / t['pruned'][0]:.1f}×; blocked 10 % = "
          f"{t['blocked'][1] / t['blocked'][0]:.1f}×, 100 % = {t['blocked'][2] / t['blocked'][0]:.1f}× (bank 10× / 100×)")
    plot(results, args.plot, machine, args.threads)
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
