"""Exact kNN with bit-identical winners: float32 GEMM candidates under a proven rounding bound, float64 re-rank.

Contract of every kernel built on this module (``BlockedKnnIndex`` here, ``knn_pruned.PrunedKnnIndex``):
for each query q (a row of (P,D) float32), the k bank rows with the smallest float64 ``Σ_d (q_d − b_d)²``
(evaluated row by row on the float32 values), ties to the lower bank row; the distance returned is
``float32(sqrt(that))`` — the exact Euclidean distance to within one float32 rounding (2⁻²⁴ relative).
Two kernels that honour it give bit-identical indices and distances, whatever they prune.
A query row with NaN/Inf (or too large to square in float32) gets distance NaN and index −1: a patch
score that is not finite fails closed downstream.

How: bank and queries are centred on the bank mean μ (float32), the bank stored as ``[b̃, ‖b̃‖²]`` and the
queries as ``[−2q̃, 1]``, so one sgemm per block gives ``G = ‖b̃‖² − 2 q̃·b̃``. With the standard dot-product
bound (any summation order, FMA or not) ``|G − exact| ≤ δ(q)`` and the centring rounding
``|‖q̃ − b̃‖ − ‖q − b‖| ≤ ε(q)``, every entry brackets its true distance t in ``[lo, hi]``. A running
upper bound U(q) (k-th smallest hi seen) prunes every entry with ``lo > U``: such a row is provably
farther than k others. The survivors (the winners plus near-ties, usually one or two per query) are
re-ranked in float64. The candidate list is bounded: beyond ``CANDIDATE_CAP`` pairs it is compacted
to the exact k best per query so far (adversarial ties cannot grow it without bound).
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError

U32 = float(np.finfo(np.float32).eps) / 2  # unit roundoff of float32, 2⁻²⁴
SAFETY = 2.0  # the proven bounds are doubled: rounding of the bounds themselves, never a tight call
BLOCK_ROWS = 2048
"""Bank rows per GEMM block (equal blocks, multiple of 16): a 784 × 2048 float32 block is 6.4 MB (L3) and
the sgemm of a (784,153)·(153,2048) block runs near the square-matrix rate."""
QUERY_ROWS = 1024
CANDIDATE_CAP = 1 << 18
"""Pairs kept before a compaction to the exact k best per query (memory: 16 B per pair)."""
MAX_NORM = 1e17
"""Centred rows with a norm above this are not searched (their squares would overflow float32): NaN, −1."""


def gamma(n: int) -> float:
    """γₙ = n·u / (1 − n·u): the relative bound of an n-term float32 dot product, any order."""
    return n * U32 / (1.0 - n * U32)


def check_bank(bank) -> np.ndarray:
    """(M,D) float32|float16 finite ndarray, M, D ≥ 1 → float32 C-contiguous (a view when it already is)."""
    from .kernels import _check_array, _check_finite, _shape

    _check_array("bank", bank, 2, (np.float32, np.float16), "(M,D) float32|float16")
    if bank.shape[0] < 1 or bank.shape[1] < 1:
        raise InputError(f"bank: got shape {_shape(bank)}, expected (M,D) with M >= 1 and D >= 1")
    _check_finite("bank", bank)
    return np.ascontiguousarray(bank, dtype=np.float32)


def check_queries(queries, dim: int, k: int, size: int) -> tuple[np.ndarray, int]:
    """Validate (P,D) queries and k ≤ M → (float32 C-contiguous queries, k). NaN/Inf rows are allowed (fail closed)."""
    from .kernels import _check_array, _positive_int, _shape

    _check_array("queries", queries, 2, (np.float32, np.float16), f"(P,{dim}) float32")
    if queries.shape[1] != dim:
        raise InputError(f"queries: got shape {_shape(queries)}, expected (P,{dim}) to match the bank's D={dim}")
    k = _positive_int("k", k, allow_none=False)
    if k > size:
        raise InputError(f"k: got {k}, expected at most the bank size M={size}")
    return np.ascontiguousarray(queries, dtype=np.float32), k


class CentredBank:
    """The bank as the search kernels hold it.

    bank: (M,D) float32 original rows (kept for the float64 re-rank); ``order``: (M,) int64, the original
    row of each stored row; ``aug``: (M,D+1) float32 ``[b̃, ‖b̃‖²]`` in stored order, b̃ = fl(b − μ);
    ``radius``: max ‖b̃‖ (float64).
    """

    def __init__(self, bank: np.ndarray, order: np.ndarray | None = None):
        self.bank = bank
        m, d = bank.shape
        self.order = np.arange(m, dtype=np.int64) if order is None else np.asarray(order, np.int64)
        self.mean = bank.mean(axis=0, dtype=np.float64).astype(np.float32)
        self.aug = np.empty((m, d + 1), np.float32)
        np.subtract(bank[self.order], self.mean, out=self.aug[:, :d])
        np.einsum("md,md->m", self.aug[:, :d], self.aug[:, :d], out=self.aug[:, d])
        norms2 = np.einsum("md,md->m", self.aug[:, :d].astype(np.float64), self.aug[:, :d].astype(np.float64))
        self.radius = float(np.sqrt(norms2.max()))
        if not self.radius * self.radius * 4 < float(np.finfo(np.float32).max) / 4:
            raise InputError(f"bank: row norms up to {self.radius:.3g}, expected < 1e18 (their squares overflow float32); "
                             "rescale the features")

    @property
    def size(self) -> int:
        return int(self.bank.shape[0])

    @property
    def dim(self) -> int:
        return int(self.bank.shape[1])

    @property
    def nbytes(self) -> int:
        return int(self.aug.nbytes + self.order.nbytes)


class Search:
    """One search's state for ≤ ``QUERY_ROWS`` queries: augmented centred queries, bounds, running U, candidates.

    ``visit(rows, start, stop)`` folds the stored bank rows [start, stop) into the queries ``rows``
    (int array or None = all); ``result()`` → ((p,k) float32 distances, (p,k) int64 original rows).
    """

    def __init__(self, cb: CentredBank, q: np.ndarray, k: int, gemm: np.ndarray):
        p, d = q.shape
        self.cb, self.q, self.k, self.gemm = cb, q, k, gemm
        centred = q - cb.mean
        with np.errstate(over="ignore", invalid="ignore"):
            self.qn2 = np.einsum("pd,pd->p", centred.astype(np.float64), centred.astype(np.float64))
        self.ok = np.isfinite(self.qn2) & (self.qn2 < MAX_NORM**2)
        centred[~self.ok] = 0.0  # searched like the origin, reported as NaN
        self.qn2[~self.ok] = 0.0
        self.qa = np.empty((p, d + 1), np.float32)
        np.multiply(centred, np.float32(-2.0), out=self.qa[:, :d])
        self.qa[:, d] = 1.0
        qn, r = np.sqrt(self.qn2), cb.radius
        # |G − (‖b̃‖² − 2q̃·b̃)| ≤ γ_{D+1}(‖b̃‖² + 2‖q̃‖‖b̃‖) + γ_D‖b̃‖² (the stored norm's own rounding) + ulp(G)
        self.delta = SAFETY * (gamma(d + 2) * (2.0 * r * r + 2.0 * qn * r) + 4 * U32 * (r * r + 2 * qn * r))
        # |‖q̃ − b̃‖ − ‖q − b‖| ≤ u(‖q − μ‖ + ‖b − μ‖)
        self.eps = SAFETY * U32 * (qn + r) * (1 + 1e-6) + 1e-30
        self.upper = np.full(p, np.inf)
        self.top = np.full((p, k), np.inf) if k > 1 else None
        self.pairs_q: list[np.ndarray] = []
        self.pairs_b: list[np.ndarray] = []
        self.count = 0

    # -- bounds ------------------------------------------------------------------------------------------
    def hi(self, g: np.ndarray, rows) -> np.ndarray:
        """Upper bound of the true distance for G values g (float64 out) of queries ``rows``."""
        sel = slice(None) if rows is None else rows
        return np.sqrt(np.maximum(g.astype(np.float64) + self.qn2[sel] + self.delta[sel], 0.0)) + self.eps[sel]

    def theta(self, rows) -> np.ndarray:
        """Largest G that can still have lo ≤ U for queries ``rows`` (float32, rounded up; +inf where U is)."""
        sel = slice(None) if rows is None else rows
        with np.errstate(invalid="ignore"):
            t = (self.upper[sel] + self.eps[sel]) ** 2 - self.qn2[sel] + self.delta[sel]
        t32 = t.astype(np.float32)
        return np.nextafter(t32, np.float32(np.inf), out=t32)

    # -- folding a block ---------------------------------------------------------------------------------
    def visit(self, rows: np.ndarray | None, start: int, stop: int, stored: np.ndarray | None = None) -> None:
        """Fold stored bank rows [start, stop) — or the stored rows ``stored`` (int array) — into queries ``rows``."""
        w = stop - start if stored is None else len(stored)
        qa = self.qa if rows is None else self.qa[rows]
        p = len(qa)
        if p == 0 or w <= 0:
            return
        if self.gemm.size < p * w:
            self.gemm = np.empty(p * w, np.float32)
        part = self.gemm[: p * w].reshape(p, w)
        block = self.cb.aug[start:stop] if stored is None else self.cb.aug[stored]
        np.dot(qa, block.T, out=part)
        gmin = part.min(axis=1)
        sel = np.arange(p) if rows is None else rows
        k = self.k
        if k == 1:
            self.upper[sel] = np.minimum(self.upper[sel], self.hi(gmin, rows))
        else:
            fresh = np.flatnonzero(np.isinf(self.upper[sel]))
            if fresh.size and w >= k:
                kth = np.partition(part[fresh], k - 1, axis=1)[:, k - 1]
                self.upper[sel[fresh]] = self.hi(kth, sel[fresh])
        theta = self.theta(sel)
        active = np.flatnonzero(gmin <= theta)
        if active.size == 0:
            return
        sub = part[active]
        r, c = np.nonzero(sub <= theta[active, None])
        qrows = sel[active][r]
        if k > 1:
            self._merge_top(qrows, self.hi(sub[r, c], qrows))
        self._add(qrows, c + start if stored is None else stored[c])

    def _merge_top(self, qrows: np.ndarray, hi: np.ndarray) -> None:
        """Fold candidate upper bounds into the per-query k smallest (``top``); U = min(U, k-th smallest)."""
        from .kernels import _merge_topk

        order = np.argsort(qrows, kind="stable")
        dummy = np.zeros(self.top.shape, np.int64)
        _merge_topk(self.top, dummy, qrows[order], hi[order], np.zeros(len(order), np.int64))
        touched = np.unique(qrows)
        self.upper[touched] = np.minimum(self.upper[touched], self.top[touched].max(axis=1))

    def _add(self, qrows: np.ndarray, stored: np.ndarray) -> None:
        self.pairs_q.append(qrows)
        self.pairs_b.append(stored)
        self.count += len(qrows)
        if self.count > CANDIDATE_CAP:
            self._compact()

    # -- exact re-rank -----------------------------------------------------------------------------------
    def _ranked(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The surviving pairs, exact: (query row, original bank row, float64 d²), sorted by (query, d², bank row)."""
        if not self.pairs_q:
            empty = np.empty(0, np.int64)
            return empty, empty, np.empty(0)
        qi = np.concatenate(self.pairs_q)
        bi = self.cb.order[np.concatenate(self.pairs_b)]
        d2 = exact_d2(self.q, self.cb.bank, qi, bi)
        key = np.lexsort((bi, d2, qi))
        qi, bi, d2 = qi[key], bi[key], d2[key]
        fresh = np.r_[True, (qi[1:] != qi[:-1]) | (bi[1:] != bi[:-1])]  # a pair folded twice counts once
        qi, bi, d2 = qi[fresh], bi[fresh], d2[fresh]
        first = np.r_[True, qi[1:] != qi[:-1]]
        rank = np.arange(len(qi)) - np.maximum.accumulate(np.where(first, np.arange(len(qi)), 0))
        keep = rank < self.k
        return qi[keep], bi[keep], d2[keep]

    def _compact(self) -> None:
        qi, bi, _ = self._ranked()
        inverse = np.empty(self.cb.size, np.int64)
        inverse[self.cb.order] = np.arange(self.cb.size)
        self.pairs_q, self.pairs_b, self.count = [qi], [inverse[bi]], len(qi)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        p, k = len(self.q), self.k
        dist = np.full((p, k), np.nan, np.float32)
        index = np.full((p, k), -1, np.int64)
        qi, bi, d2 = self._ranked()
        first = np.searchsorted(qi, qi, side="left")
        slot = np.arange(len(qi)) - first
        dist[qi, slot] = np.sqrt(d2).astype(np.float32)
        index[qi, slot] = bi
        bad = ~self.ok
        dist[bad], index[bad] = np.nan, -1
        return dist, index


def exact_d2(q: np.ndarray, bank: np.ndarray, qi: np.ndarray, bi: np.ndarray) -> np.ndarray:
    """float64 Σ_d (q[qi]_d − bank[bi]_d)² per pair, each row summed on its own (the same bits for the
    same pair whatever else is in the batch)."""
    out = np.empty(len(qi))
    step = 8192
    for s in range(0, len(qi), step):
        diff = q[qi[s:s + step]].astype(np.float64)
        diff -= bank[bi[s:s + step]]
        diff *= diff
        out[s:s + step] = diff.sum(axis=1)
    return out


def equal_blocks(m: int, block: int, align: int = 16) -> int:
    """Width of ⌈m / block⌉ equal blocks covering m rows, rounded up to ``align`` (no ragged last block)."""
    n = max(1, -(-m // block))
    w = -(-m // n)
    return min(m, -(-w // align) * align)


class BlockedKnnIndex:
    """Exact kNN by brute force at the GEMM rate: every bank block is one sgemm fused with its min-reduction.

    bank: (M,D) float32|float16 (float16 is widened once). ``search_with_index`` honours the module's contract.
    """

    def __init__(self, bank: np.ndarray, block_rows: int | None = None):
        self.cb = CentredBank(check_bank(bank))
        self.block_rows = equal_blocks(self.cb.size, block_rows or BLOCK_ROWS)

    @property
    def size(self) -> int:
        return self.cb.size

    @property
    def dim(self) -> int:
        return self.cb.dim

    @property
    def nbytes(self) -> int:
        return self.cb.nbytes

    def search(self, queries: np.ndarray, k: int = 1) -> np.ndarray:
        """(P,D) float32 queries → (P,k) float32 distances to the k nearest bank rows, ascending (NaN: bad query)."""
        return self.search_with_index(queries, k)[0]

    def search_with_index(self, queries: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Like ``search``, plus the (P,k) int64 bank rows (−1 for a bad query)."""
        queries, k = check_queries(queries, self.dim, k, self.size)
        dist = np.empty((len(queries), k), np.float32)
        index = np.empty((len(queries), k), np.int64)
        m, w = self.size, self.block_rows
        gemm = np.empty(min(len(queries), QUERY_ROWS) * w, np.float32)
        for s in range(0, len(queries), QUERY_ROWS):
            state = Search(self.cb, queries[s:s + QUERY_ROWS], k, gemm)
            for start in range(0, m, w):
                state.visit(None, start, min(m, start + w))
            dist[s:s + QUERY_ROWS], index[s:s + QUERY_ROWS] = state.result()
        return dist, index
