"""Fused distance kernels for the host scoring heads (numpy; onnxruntime for ``OnnxKnnIndex``; no torch, no onnx).

- ``KnnIndex``: exact k-nearest-neighbour Euclidean distances of (P,D) queries to an (M,D) bank,
  float32 or float16 bank. ``d² = ‖q‖² + ‖m‖² − 2 q·m`` by blocks: the bank is stored augmented
  as ``[m, ‖m‖²]`` and the queries as ``[−2q, 1]``, so one sgemm per (query block × bank block)
  yields ``‖m‖² − 2 q·m`` directly, and the running arg-min / top-k is folded into the same pass
  over the cache-resident block. The full P×M matrix is never materialised. The winners' distances
  are then recomputed exactly as ``‖q − m‖`` (P·k·D flops), so duplicates give exactly 0 and small
  distances do not suffer the cancellation of the expanded formula.
- ``MahalanobisIndex``: squared Mahalanobis distance ``‖Lᵀ(x − μ)‖²`` per position, with
  ``L Lᵀ = Σ⁻¹`` (see ``inverse_cov_factor``), batched over all positions in one matmul/einsum.

- ``OnnxKnnIndex``: the same exact kNN with the candidate search run by onnxruntime's own GEMM (MLAS)
  from the chunked graph ``knn.onnx`` that ``scoring.graph.build_knn_search`` wrote at export; the
  winners' distances are refined exactly on the host, as ``KnnIndex`` does.

float16 storage halves the memory; blocks are widened to float32 on the fly with an exact bit
trick (3 vectorised passes, ~3× faster than numpy's float16 cast on this CPU) before the sgemm.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError

BANK_BLOCK_ROWS = 2048
"""Default bank rows per block. Measured on a 2-core AMD EPYC (Zen 5), OpenBLAS Haswell kernels,
P=784, D=152: 2048 ≈ 4096 < 1024 < 512 (−10 %) < 128 (−40 %); a 784×2048 float32 block (6.4 MB)
stays in L3 between the sgemm and the arg-min."""

QUERY_BLOCK_ROWS = 1024
"""Default query rows per block (only matters when P > 1024, e.g. batches of images)."""

TOPK_SEED_COLUMNS = 256
"""k > 1: columns of the first bank block partitioned to seed the running top-k (the rest of the
bank is filtered against the running k-th best, so only a few entries per row are ever merged)."""

_F16_MASK = np.int32(-1879056384)  # 0x8FFFE000: sign bit + the 15 exponent/mantissa bits shifted by 13
_F16_SCALE = np.float32(2.0**112)  # rebias the exponent from 15 to 127


def _f16_to_f32(src: np.ndarray, dst: np.ndarray, scratch: np.ndarray) -> None:
    """Widen finite float16 ``src`` into float32 ``dst`` (same shape), bit-exact, including
    subnormals and signed zeros. ``scratch``: int32 array of src's shape. Inf/NaN are not
    handled (indexes reject non-finite float16 arrays up front)."""
    np.left_shift(src.view(np.int16), 13, out=scratch, dtype=np.int32)
    np.bitwise_and(scratch, _F16_MASK, out=scratch)
    np.multiply(scratch.view(np.float32), _F16_SCALE, out=dst)


def _shape(a: np.ndarray) -> str:
    return "(" + ",".join(str(s) for s in a.shape) + ")"


def _check_array(name: str, a, ndim: int, dtypes: tuple, expected: str) -> np.ndarray:
    if not isinstance(a, np.ndarray):
        raise InputError(f"{name}: got {type(a).__name__}, expected a numpy array of shape {expected}")
    if a.ndim != ndim:
        raise InputError(f"{name}: got shape {_shape(a)}, expected {expected}")
    if a.dtype not in dtypes:
        allowed = "|".join(np.dtype(d).name for d in dtypes)
        raise InputError(f"{name}: got dtype {a.dtype}, expected {allowed}; convert with .astype(np.float32)")
    return a


def _check_finite(name: str, a: np.ndarray) -> None:
    if not np.isfinite(a).all():
        raise InputError(f"{name}: contains NaN or Inf, expected finite values; clean or refit the model")


def _positive_int(name: str, value, allow_none: bool = True) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{name}: got {value!r}, expected a positive integer")
    return int(value)


class KnnIndex:
    """Exact Euclidean kNN over a fixed bank.

    bank: (M,D) float32 or float16 ndarray (float16 is kept as float16: half the memory).
    block_rows: bank rows per block (default ``BANK_BLOCK_ROWS``).
    """

    def __init__(self, bank: np.ndarray, block_rows: int | None = None):
        _check_array("bank", bank, 2, (np.float32, np.float16), "(M,D) float32|float16")
        if bank.shape[0] < 1 or bank.shape[1] < 1:
            raise InputError(f"bank: got shape {_shape(bank)}, expected (M,D) with M >= 1 and D >= 1")
        _check_finite("bank", bank)
        self.block_rows = _positive_int("block_rows", block_rows) or BANK_BLOCK_ROWS
        self.query_rows = QUERY_BLOCK_ROWS
        m, d = bank.shape
        self.dtype = bank.dtype
        if bank.dtype == np.float32:
            # [m, ‖m‖²]: the squared norm rides in the sgemm as an extra column.
            self._aug = np.empty((m, d + 1), np.float32)
            self._aug[:, :d] = bank
            np.einsum("md,md->m", bank, bank, out=self._aug[:, d])
            self._bank16 = None
            self.sq_norms = self._aug[:, d]
        else:
            self._aug = None
            self._bank16 = np.ascontiguousarray(bank)
            self.sq_norms = np.empty(m, np.float32)
            rows = min(m, self.block_rows)
            wide, scratch = np.empty((rows, d), np.float32), np.empty((rows, d), np.int32)
            for start in range(0, m, rows):
                blk = self._bank16[start:start + rows]
                w, s = wide[: len(blk)], scratch[: len(blk)]
                _f16_to_f32(blk, w, s)
                np.einsum("md,md->m", w, w, out=self.sq_norms[start:start + len(blk)])

    @property
    def size(self) -> int:
        """M, the number of bank rows."""
        return int(self.sq_norms.shape[0])

    @property
    def dim(self) -> int:
        """D, the feature dimension."""
        return int((self._aug.shape[1] - 1) if self._aug is not None else self._bank16.shape[1])

    @property
    def nbytes(self) -> int:
        """Bytes held by the index (bank, norms)."""
        held = self._aug if self._aug is not None else self._bank16
        return int(held.nbytes + (0 if self._aug is not None else self.sq_norms.nbytes))

    def rows(self, index: np.ndarray) -> np.ndarray:
        """Bank rows at ``index`` (any integer shape) as float32, shape index.shape + (D,)."""
        if self._aug is not None:
            return self._aug[index, : self.dim]
        return self._bank16[index].astype(np.float32)

    def search(self, queries: np.ndarray, k: int = 1) -> np.ndarray:
        """(P,D) float32 queries → (P,k) float32 Euclidean distances to the k nearest bank rows, ascending."""
        return self.search_with_index(queries, k)[0]

    def search_with_index(self, queries: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Like ``search``, plus the (P,k) int64 bank row of each neighbour."""
        _check_array("queries", queries, 2, (np.float32, np.float16), f"(P,{self.dim}) float32")
        if queries.shape[1] != self.dim:
            raise InputError(f"queries: got shape {_shape(queries)}, expected (P,{self.dim}) to match the bank's D={self.dim}")
        k = _positive_int("k", k, allow_none=False)
        if k > self.size:
            raise InputError(f"k: got {k}, expected at most the bank size M={self.size}")
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        p_total, d = queries.shape
        dist = np.empty((p_total, k), np.float32)
        index = np.empty((p_total, k), np.int64)
        if p_total == 0:
            return dist, index
        qb = min(p_total, self.query_rows)
        mb = min(self.size, max(self.block_rows, k))
        work = _Workspace(qb, mb, d, self._bank16 is not None, k > 1)
        for start in range(0, p_total, qb):
            q = queries[start:start + qb]
            dist[start:start + len(q)], index[start:start + len(q)] = self._search_block(q, k, work)
        return dist, index

    def _bank_blocks(self, work: "_Workspace"):
        """Yield (start, (w, D+1) float32 augmented block)."""
        m, mb, d = self.size, work.mb, self.dim
        for start in range(0, m, mb):
            stop = min(m, start + mb)
            if self._aug is not None:
                yield start, self._aug[start:stop]
            else:
                blk = work.wide[: stop - start]
                _f16_to_f32(self._bank16[start:stop], blk[:, :d], work.scratch[: stop - start])
                blk[:, d] = self.sq_norms[start:stop]
                yield start, blk

    def _search_block(self, q: np.ndarray, k: int, work: "_Workspace") -> tuple[np.ndarray, np.ndarray]:
        p, d = q.shape
        qa = work.qa[:p]
        np.multiply(q, np.float32(-2.0), out=qa[:, :d])
        qa[:, d] = 1.0
        rows = np.arange(p)
        best = np.full((p, k), np.inf, np.float32)
        arg = np.zeros((p, k), np.int64)
        for start, blk in self._bank_blocks(work):
            w = len(blk)
            part = work.gemm[: p * w].reshape(p, w)  # ‖m‖² − 2 q·m for this block, cache-resident
            np.dot(qa, blk.T, out=part)
            if k == 1:
                j = part.argmin(axis=1)
                v = part[rows, j]
                better = v < best[:, 0]
                best[better, 0] = v[better]
                arg[better, 0] = j[better] + start
            else:
                lo = 0
                if start == 0:
                    # Seed the carried top-k with a partition of the first few columns (w >= k) …
                    lo = min(w, max(k, TOPK_SEED_COLUMNS))
                    j = np.argpartition(part[:, :lo], k - 1, axis=1)[:, :k]
                    best = np.take_along_axis(part, j, axis=1)
                    arg = j.astype(np.int64)
                if lo < w:
                    # … then only entries below a row's current k-th best can enter its top-k.
                    sub = part[:, lo:]
                    mask = work.mask[: sub.size].reshape(sub.shape)
                    np.less(sub, best.max(axis=1)[:, None], out=mask)
                    flat = np.flatnonzero(mask)
                    if flat.size:
                        r, c = np.divmod(flat, w - lo)
                        _merge_topk(best, arg, r, sub[r, c], c + (start + lo))
        # Exact refinement of the winners: ‖q − m‖² directly, then sort ascending.
        diff = self.rows(arg)
        diff -= q[:, None, :]
        d2 = np.einsum("pkd,pkd->pk", diff, diff)
        if k > 1:
            order = np.argsort(d2, axis=1, kind="stable")
            d2 = np.take_along_axis(d2, order, axis=1)
            arg = np.take_along_axis(arg, order, axis=1)
        return np.sqrt(d2, out=d2), arg


def _merge_topk(best: np.ndarray, arg: np.ndarray, rows: np.ndarray, vals: np.ndarray, cols: np.ndarray) -> None:
    """Merge new (row, value, bank index) entries into the carried (p,k) ``best``/``arg``, in place.

    ``rows`` must be sorted (row-major ``flatnonzero`` order). Only the touched rows are rebuilt:
    a padded (touched, k + most entries in one row) matrix of carried + new values, partitioned.
    """
    k = best.shape[1]
    starts = np.flatnonzero(np.concatenate(([True], rows[1:] != rows[:-1])))
    touched = rows[starts]
    counts = np.diff(np.append(starts, rows.size))
    group = np.repeat(np.arange(touched.size), counts)
    slot = np.arange(rows.size) - np.repeat(starts, counts) + k
    width = k + int(counts.max())
    v = np.full((touched.size, width), np.inf, np.float32)
    i = np.zeros((touched.size, width), np.int64)
    v[:, :k] = best[touched]
    i[:, :k] = arg[touched]
    v[group, slot] = vals
    i[group, slot] = cols
    keep = np.argpartition(v, k - 1, axis=1)[:, :k]
    best[touched] = np.take_along_axis(v, keep, axis=1)
    arg[touched] = np.take_along_axis(i, keep, axis=1)


class _Workspace:
    """Preallocated per-search buffers: augmented queries, the GEMM block, float16 widening scratch."""

    def __init__(self, qb: int, mb: int, d: int, f16: bool, topk: bool):
        self.mb = mb
        self.qa = np.empty((qb, d + 1), np.float32)
        self.gemm = np.empty(qb * mb, np.float32)
        if topk:
            self.mask = np.empty(qb * mb, np.bool_)
        if f16:
            self.wide = np.empty((mb, d + 1), np.float32)
            self.scratch = np.empty((mb, d), np.int32)


def knn_distances(queries: np.ndarray, bank: np.ndarray, k: int = 1) -> np.ndarray:
    """(P,D) queries, (M,D) bank → (P,k) float32 distances to the k nearest bank rows, ascending."""
    return KnnIndex(bank).search(queries, k)


def inverse_cov_factor(cov: np.ndarray, dtype=np.float32) -> np.ndarray:
    """(P,C,C) covariances → (P,C,C) factors L (upper triangular) with L Lᵀ = Σ⁻¹, in ``dtype``.

    Computed in float64 as L = R⁻ᵀ with R = chol(Σ) (Σ = R Rᵀ ⇒ Σ⁻¹ = R⁻ᵀ R⁻¹). This is the
    numerically better route than chol(inv(Σ)): one factorisation instead of two, the only
    inversion is of the triangular R whose condition number is √κ(Σ), and Σ⁻¹ is never formed
    explicitly (an explicit inverse carries κ(Σ)·ε errors and can lose symmetry / positive
    definiteness, making the second Cholesky fail on ill-conditioned covariances).
    """
    _check_array("cov", cov, 3, (np.float16, np.float32, np.float64), "(P,C,C) float")
    if cov.shape[1] != cov.shape[2] or cov.shape[1] < 1:
        raise InputError(f"cov: got shape {_shape(cov)}, expected (P,C,C) square matrices")
    _check_finite("cov", cov)
    c64 = cov.astype(np.float64)
    c64 = 0.5 * (c64 + c64.transpose(0, 2, 1))
    try:
        r = np.linalg.cholesky(c64)
    except np.linalg.LinAlgError:
        raise InputError("cov: a covariance is not positive definite; add a ridge ε·I (PaDiM uses 0.01·I)") from None
    r_inv = np.tril(np.linalg.inv(r))
    return np.ascontiguousarray(r_inv.transpose(0, 2, 1), dtype=dtype)


class MahalanobisIndex:
    """Squared Mahalanobis distance per position.

    mean: (P,C) float32|float16; factor: (P,C,C) float32|float16 with L Lᵀ = Σ⁻¹ per position
    (float16 factors are kept as float16 and widened chunk by chunk).
    """

    POSITION_CHUNK = 32  # float16 factors: positions widened per chunk (32·C²·4 B = 1.3 MB at C=100)

    def __init__(self, mean: np.ndarray, factor: np.ndarray):
        _check_array("mean", mean, 2, (np.float32, np.float16), "(P,C) float32|float16")
        p, c = mean.shape
        _check_array("factor", factor, 3, (np.float32, np.float16), f"({p},{c},{c}) float32|float16")
        if factor.shape != (p, c, c):
            raise InputError(f"factor: got shape {_shape(factor)}, expected ({p},{c},{c}) to match mean {_shape(mean)}")
        if p < 1 or c < 1:
            raise InputError(f"mean: got shape {_shape(mean)}, expected (P,C) with P >= 1 and C >= 1")
        _check_finite("mean", mean)
        _check_finite("factor", factor)
        self.mean = np.ascontiguousarray(mean, dtype=np.float32)
        self.factor = np.ascontiguousarray(factor)
        self.dtype = factor.dtype

    @property
    def positions(self) -> int:
        return int(self.mean.shape[0])

    @property
    def channels(self) -> int:
        return int(self.mean.shape[1])

    def score(self, x: np.ndarray) -> np.ndarray:
        """(N,P,C) float32 features → (N,P) float32 squared distances ‖Lᵀ(x − μ)‖²."""
        p, c = self.mean.shape
        _check_array("x", x, 3, (np.float32, np.float16), f"(N,{p},{c}) float32")
        if x.shape[1:] != (p, c):
            raise InputError(f"x: got shape {_shape(x)}, expected (N,{p},{c}) to match the model's positions and channels")
        diff = x.astype(np.float32, copy=False) - self.mean  # (N,P,C)
        if self.factor.dtype == np.float32:
            return self._quad(diff, self.factor)
        out = np.empty(diff.shape[:2], np.float32)
        step = self.POSITION_CHUNK
        wide = np.empty((min(step, p), c, c), np.float32)
        scratch = np.empty_like(wide, dtype=np.int32)
        for start in range(0, p, step):
            stop = min(p, start + step)
            w, s = wide[: stop - start], scratch[: stop - start]
            _f16_to_f32(self.factor[start:stop], w, s)
            out[:, start:stop] = self._quad(diff[:, start:stop], w)
        return out

    @staticmethod
    def _quad(diff: np.ndarray, factor: np.ndarray) -> np.ndarray:
        """diff (N,P,C), factor (P,C,C) float32 → (N,P) Σ_d (Σ_c diff[n,p,c] L[p,c,d])²."""
        if diff.shape[0] == 1:
            # One image: a batched GEMV, memory-bound on the factor; einsum streams it without a temp.
            y = np.einsum("pc,pcd->pd", diff[0], factor)[None]
        else:
            # Several images: one small sgemm per position through np.matmul's stacked loop.
            y = np.matmul(diff.transpose(1, 0, 2), factor).transpose(1, 0, 2)
        return np.einsum("npc,npc->np", y, y)


class OnnxKnnIndex:
    """Exact kNN: candidates from a shipped chunked search graph on onnxruntime, exact refinement here.

    bank: (M,D) float32|float16, the rows the graph was built from; graph: ``knn.onnx`` as a path or
    bytes, input ``queries`` (P,D) float32 → output ``idx`` (P,k) int64 (``scoring.graph.build_knn_search``).
    """

    def __init__(self, bank: np.ndarray, k: int, graph, threads: int | None = None):
        import onnxruntime as ort

        _check_array("bank", bank, 2, (np.float32, np.float16), "(M,D) float32|float16")
        k = _positive_int("k", k, allow_none=False)
        if len(bank) < k:
            raise InputError(f"bank: got {len(bank)} rows, expected at least k={k}")
        self.k, self.dim = k, bank.shape[1]
        self.bank = np.ascontiguousarray(bank, np.float32)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        source = graph if isinstance(graph, bytes) else str(graph)
        self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        got = self.session.get_outputs()[0].shape
        if len(got) != 2 or got[1] != k:
            raise InputError(f"kNN graph: got output shape {got}, expected (P,{k}); re-export the artifact")

    def search(self, queries: np.ndarray, k: int = 1) -> np.ndarray:
        """(P,D) float32 queries → (P,k) float32 Euclidean distances to the k nearest bank rows, ascending."""
        if k != self.k:
            raise InputError(f"k: got {k}, expected k={self.k} (the kNN graph was built for it)")
        _check_array("queries", queries, 2, (np.float32, np.float16), f"(P,{self.dim}) float32")
        if queries.shape[1] != self.dim:
            raise InputError(f"queries: got shape {_shape(queries)}, expected (P,{self.dim}) to match the bank's D={self.dim}")
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        idx = self.session.run(None, {"queries": queries})[0]
        diff = self.bank[idx] - queries[:, None, :]  # (P,k,D): exact distances of the winners
        dist = np.sqrt(np.einsum("pkd,pkd->pk", diff, diff))
        return np.sort(dist, axis=1) if self.k > 1 else dist
