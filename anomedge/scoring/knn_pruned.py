"""Exact kNN that touches a fraction of the bank: PCA lower bounds, cluster- and row-level, then full distances.

``PrunedKnnIndex`` honours ``knn_exact``'s contract (bit-identical indices and distances to
``BlockedKnnIndex``). At load the centred bank b̃ gets an embedding φ(b̃) = [P b̃, ‖b̃ − PᵀP b̃‖] with P the
first ``PCA_DIMS`` principal axes (orthonormal): ‖φ(x) − φ(y)‖² = ‖P(x − y)‖² + (‖x⊥‖ − ‖y⊥‖)² ≤ ‖x − y‖²,
so φ-distances are lower bounds of true distances, and ‖φ(x)‖ = ‖x‖ keeps the GEMM trick. The bank is
split by k-means in φ-space into clusters of ~``CLUSTER_ROWS`` rows (stored contiguously), each with its
φ-centroid c and radius r. A search
1. seeds U(q) with the full distances to the cluster whose centroid is φ-nearest to q;
2. for every other cluster: the queries whose ball bound ‖φ(q) − c‖ − r can beat U get the cluster's
   φ-distances (one small sgemm, m+2 columns), and only the rows whose φ-bound can beat U get full
   distances (one sgemm on the surviving rows × surviving queries).
All bounds carry the float32 rounding slack of ``knn_exact`` (plus the φ rounding), so nothing that could
win is ever skipped; the float64 re-rank decides.
"""

from __future__ import annotations

import numpy as np

from .knn_exact import QUERY_ROWS, SAFETY, U32, CentredBank, Search, check_bank, check_queries, gamma

PCA_DIMS = 32
CLUSTER_ROWS = 256
KMEANS_ITERATIONS = 6
KMEANS_SAMPLE = 64  # sample rows per cluster for the k-means iterations (all rows are assigned at the end)
PHI_SLACK = SAFETY * (4 * U32 + 3e-8)  # relative: φ rounded to float32, residual norm through a float64 sqrt
REL = 1e-12  # float64 rounding of the bounds themselves, relative


def _kmeans(x: np.ndarray, clusters: int, seed: int) -> np.ndarray:
    """(N,m) float32 → (N,) int64 labels of ``clusters`` k-means clusters (Lloyd on a sample; empty ones dropped)."""
    rng = np.random.default_rng(seed)
    n = len(x)
    if clusters <= 1:
        return np.zeros(n, np.int64)
    sample = x[rng.choice(n, min(n, clusters * KMEANS_SAMPLE), replace=False)]
    centres = sample[rng.choice(len(sample), clusters, replace=False)].copy()

    def assign(points: np.ndarray) -> np.ndarray:
        out = np.empty(len(points), np.int64)
        step = max(1, (1 << 24) // clusters)
        c2 = np.einsum("cd,cd->c", centres, centres)
        for s in range(0, len(points), step):
            out[s:s + step] = (c2 - 2.0 * points[s:s + step] @ centres.T).argmin(axis=1)
        return out

    for _ in range(KMEANS_ITERATIONS):
        labels = assign(sample)
        counts = np.bincount(labels, minlength=clusters)
        sums = np.zeros(centres.shape, np.float64)
        np.add.at(sums, labels, sample)
        full = counts > 0
        centres[full] = (sums[full] / counts[full, None]).astype(np.float32)
    labels = assign(x)
    return np.unique(labels, return_inverse=True)[1].reshape(-1)


class PrunedKnnIndex:
    """Exact kNN over a fixed bank with PCA/cluster pruning.

    bank: (M,D) float32|float16; ``dims``: PCA axes of the bound (default ``PCA_DIMS``, at most D);
    ``cluster_rows``: target rows per cluster; ``seed``: k-means sampling (any seed gives the same answers).
    """

    def __init__(self, bank: np.ndarray, dims: int | None = None, cluster_rows: int | None = None, seed: int = 0):
        bank = check_bank(bank)
        m, d = bank.shape
        self.dims = int(min(dims or PCA_DIMS, d))
        centred = (bank - bank.mean(axis=0, dtype=np.float64).astype(np.float32)).astype(np.float64)
        sample = centred[:: max(1, m // 20000)]
        sample = sample - sample.mean(axis=0)
        _, vectors = np.linalg.eigh(sample.T @ sample)  # ascending eigenvalues; orthonormal columns
        self.axes = np.ascontiguousarray(vectors[:, ::-1][:, : self.dims].T)  # (dims,D) float64, orthonormal rows
        phi = self._phi(centred)
        labels = _kmeans(phi.astype(np.float32), max(1, round(m / (cluster_rows or CLUSTER_ROWS))), seed)
        order = np.argsort(labels, kind="stable")
        self.cb = CentredBank(bank, order)
        # φ of the stored rows, recomputed from the very b̃ the full GEMM uses
        phi = self._phi(self.cb.aug[:, :d].astype(np.float64))
        phi32 = phi.astype(np.float32)
        self.phi_aug = np.empty((m, self.dims + 2), np.float32)
        self.phi_aug[:, : self.dims + 1] = phi32
        np.einsum("md,md->m", phi32, phi32, out=self.phi_aug[:, self.dims + 1])
        labels = labels[order]
        self.starts = np.r_[0, np.flatnonzero(np.diff(labels)) + 1, m]
        phi_stored = phi32.astype(np.float64)
        self.centres = np.stack([phi_stored[a:b].mean(axis=0) for a, b in zip(self.starts[:-1], self.starts[1:])])
        self.radii = np.array([np.sqrt(((phi_stored[a:b] - c) ** 2).sum(axis=1).max())
                               for a, b, c in zip(self.starts[:-1], self.starts[1:], self.centres)]) * (1 + REL) + 1e-30
        self.phi_radius = float(np.sqrt((phi_stored**2).sum(axis=1).max()))

    def _phi(self, x: np.ndarray) -> np.ndarray:
        """(n,D) float64 centred rows → (n,dims+1) float64 [P x, ‖x − PᵀP x‖]."""
        proj = x @ self.axes.T
        res2 = np.einsum("nd,nd->n", x, x) - np.einsum("nd,nd->n", proj, proj)
        return np.c_[proj, np.sqrt(np.maximum(res2, 0.0))]

    @property
    def size(self) -> int:
        return self.cb.size

    @property
    def dim(self) -> int:
        return self.cb.dim

    @property
    def clusters(self) -> int:
        return len(self.starts) - 1

    @property
    def nbytes(self) -> int:
        return int(self.cb.nbytes + self.phi_aug.nbytes)

    def search(self, queries: np.ndarray, k: int = 1) -> np.ndarray:
        """(P,D) float32 queries → (P,k) float32 distances to the k nearest bank rows, ascending (NaN: bad query)."""
        return self.search_with_index(queries, k)[0]

    def search_with_index(self, queries: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Like ``search``, plus the (P,k) int64 bank rows (−1 for a bad query)."""
        queries, k = check_queries(queries, self.dim, k, self.size)
        dist = np.empty((len(queries), k), np.float32)
        index = np.empty((len(queries), k), np.int64)
        self.touched = self.phi_pairs = 0
        for s in range(0, len(queries), QUERY_ROWS):
            dist[s:s + QUERY_ROWS], index[s:s + QUERY_ROWS] = self._search(queries[s:s + QUERY_ROWS], k)
        return dist, index

    def _search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        cb, dims = self.cb, self.dims
        state = Search(cb, q, k, np.empty(len(q) * CLUSTER_ROWS * 2, np.float32))
        centred = -0.5 * state.qa[:, : cb.dim].astype(np.float64)  # q̃ exactly (the −2 scaling is exact)
        phi_q = self._phi(centred)
        phi_q32 = phi_q.astype(np.float32)
        qa = np.empty((len(q), dims + 2), np.float32)
        np.multiply(phi_q32, np.float32(-2.0), out=qa[:, : dims + 1])
        qa[:, dims + 1] = 1.0
        pn2 = np.einsum("pd,pd->p", phi_q32.astype(np.float64), phi_q32.astype(np.float64))
        pn = np.sqrt(pn2)
        # distance-unit slack between the φ-bound and the true distance, and the φ-GEMM's own bound
        slack = PHI_SLACK * (pn + self.phi_radius) + state.eps
        delta = SAFETY * (gamma(dims + 3) * (2.0 * self.phi_radius**2 + 2.0 * pn * self.phi_radius)
                          + 4 * U32 * (self.phi_radius**2 + 2 * pn * self.phi_radius))
        d2c = pn2[:, None] + np.einsum("cd,cd->c", self.centres, self.centres)[None] - 2.0 * phi_q32.astype(np.float64) @ self.centres.T
        dc = np.sqrt(np.maximum(d2c, 0.0) * (1 - 1e-9))
        lower = (dc - self.radii[None]) * (1 - REL) - slack[:, None]  # (P,C) lower bound of every true distance in a cluster
        seed = d2c.argmin(axis=1)
        by_seed = np.argsort(seed, kind="stable")
        bounds = np.searchsorted(seed[by_seed], np.arange(self.clusters + 1))
        for j in range(self.clusters):
            rows = by_seed[bounds[j]:bounds[j + 1]]
            if rows.size:
                state.visit(rows, self.starts[j], self.starts[j + 1])
                self.touched += rows.size * (self.starts[j + 1] - self.starts[j])
        lower[np.arange(len(q)), seed] = np.inf  # seed pairs are folded once (a duplicate would fake a k-th best)
        lower_t = np.ascontiguousarray(lower.T)
        for j in range(self.clusters):
            qs = np.flatnonzero(lower_t[j] <= state.upper)
            if qs.size == 0:
                continue
            a, b = self.starts[j], self.starts[j + 1]
            g = qa[qs] @ self.phi_aug[a:b].T  # ‖φb‖² − 2 φq·φb, (|qs|, b − a)
            self.phi_pairs += g.size
            with np.errstate(invalid="ignore"):
                theta = ((state.upper[qs] + slack[qs]) / (1 - REL)) ** 2 - pn2[qs] + delta[qs]
            keep = g <= (theta * (1 + 1e-6)).astype(np.float32)[:, None]
            cols = np.flatnonzero(keep.any(axis=0))
            if cols.size == 0:
                continue
            qs = qs[keep[:, cols].any(axis=1)]
            # the survivors' full distances: one sgemm on surviving queries × surviving rows
            state.visit(qs, 0, 0, stored=cols + a)
            self.touched += qs.size * cols.size
        return state.result()
