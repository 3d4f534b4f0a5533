"""Sufficient statistics of per-position Gaussians: what PaDiM's fit needs, mergeable exactly (numpy, float64).

For samples x (P,N,C) — N feature vectors at each of P positions — ``GaussianStats`` holds, per position,
centred on the position's own mean μ (so merging never subtracts large raw moments):

- ``count`` N (one integer for all positions),
- ``mean`` μ (P,C),
- ``m2`` Σₙ (xₙ − μ)(xₙ − μ)ᵀ (P,C,C) — the scatter matrix,
- ``t`` Σₙ ‖xₙ − μ‖² (xₙ − μ) (P,C) and ``q`` Σₙ ‖xₙ − μ‖⁴ (P,) — the two higher moments Ledoit-Wolf's
  shrinkage needs (its β term is Σₙ‖xₙ − μ‖⁴; restating it around a new mean needs ``t`` and ``m2``).

``combine(a, b)`` is Chan et al.'s parallel update extended to ``t`` and ``q``: each part is re-centred on
the merged mean (y = z + δ with Σz = 0, δ = μ_part − μ) and the parts are summed:
m2' = m2 + nδδᵀ; t' = t + 2 m2 δ + tr(m2) δ + n‖δ‖² δ; q' = q + 4 δᵀm2δ + n‖δ‖⁴ + 4 t·δ + 2‖δ‖² tr(m2).
So ``combine(stats(A), stats(B))`` equals ``stats(A ∪ B)`` up to float64 rounding, in any order, and the
covariance (``covariance``: Ledoit-Wolf or the sample covariance, plus a ridge) computed from it equals the
one a refit on A ∪ B computes. ``pack`` / ``unpack`` store the statistics as one (P, K) float64 array
(``stats.npy``: mean | upper triangle of m2 | t | q, K = C + C(C+1)/2 + C + 1); the count goes in metadata.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError

STATS_FILE = "stats.npy"
LAYOUT = ("mean", "m2_triu", "t", "q")
SHRINKAGES = ("ledoit_wolf", "none")


@dataclass(frozen=True)
class GaussianStats:
    count: int
    mean: np.ndarray  # (P,C) float64
    m2: np.ndarray  # (P,C,C) float64
    t: np.ndarray  # (P,C) float64
    q: np.ndarray  # (P,) float64

    @property
    def positions(self) -> int:
        return int(self.mean.shape[0])

    @property
    def channels(self) -> int:
        return int(self.mean.shape[1])


def from_samples(x: np.ndarray) -> GaussianStats:
    """(P,N,C) samples (any float dtype; computed in float64) → their statistics. N ≥ 1."""
    if x.ndim != 3 or x.shape[1] < 1 or x.shape[2] < 1:
        raise InputError(f"samples: shape {x.shape}, expected (P,N,C) with N >= 1 and C >= 1")
    x = np.asarray(x, np.float64)
    mean = x.mean(axis=1)
    xc = x - mean[:, None, :]
    m2 = np.matmul(xc.transpose(0, 2, 1), xc)
    sq = np.einsum("pnc,pnc->pn", xc, xc)
    t = np.einsum("pn,pnc->pc", sq, xc)
    q = np.einsum("pn,pn->p", sq, sq)
    return GaussianStats(int(x.shape[1]), mean, m2, t, q)


def _recentre(s: GaussianStats, delta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``s``'s (m2, t, q) re-centred on a new mean μ_new, given δ = μ_s − μ_new (P,C)."""
    n = s.count
    trace = np.einsum("pcc->p", s.m2)
    d2 = np.einsum("pc,pc->p", delta, delta)
    m2_delta = np.einsum("pcd,pd->pc", s.m2, delta)
    m2 = s.m2 + n * delta[:, :, None] * delta[:, None, :]
    t = s.t + 2.0 * m2_delta + (trace + n * d2)[:, None] * delta
    q = s.q + 4.0 * np.einsum("pc,pc->p", delta, m2_delta) + n * d2 * d2 \
        + 4.0 * np.einsum("pc,pc->p", s.t, delta) + 2.0 * d2 * trace
    return m2, t, q


def combine(a: GaussianStats, b: GaussianStats) -> GaussianStats:
    """The statistics of the union of the samples behind ``a`` and ``b`` (same P and C)."""
    if a.mean.shape != b.mean.shape:
        raise InputError(f"statistics of shape {a.mean.shape} and {b.mean.shape}: expected the same (P,C)")
    n = a.count + b.count
    mean = a.mean + (b.count / n) * (b.mean - a.mean)
    ma, ta, qa = _recentre(a, a.mean - mean)
    mb, tb, qb = _recentre(b, b.mean - mean)
    return GaussianStats(n, mean, ma + mb, ta + tb, qa + qb)


def concat(parts: list[GaussianStats]) -> GaussianStats:
    """Statistics of position chunks (same samples, consecutive positions) → one block over all positions."""
    if len({p.count for p in parts}) != 1:
        raise InputError("position chunks with different sample counts cannot be concatenated")
    return GaussianStats(parts[0].count, *(np.concatenate([getattr(p, k) for p in parts]) for k in ("mean", "m2", "t", "q")))


def covariance(s: GaussianStats, shrinkage: str = "ledoit_wolf", ridge: float = 0.01) -> np.ndarray:
    """(P,C,C) float64 covariance from the statistics: Ledoit-Wolf (as ``padim.ledoit_wolf`` /
    sklearn: S = m2/N, target tr S / C · I, β from q) or the sample covariance m2/(N − 1); + ridge·I."""
    if shrinkage not in SHRINKAGES:
        raise InputError(f"shrinkage '{shrinkage}': expected one of {', '.join(SHRINKAGES)}")
    n, c = s.count, s.channels
    eye = np.eye(c)
    if shrinkage == "none":
        if n < 2:
            raise InputError(f"{n} training image(s): the sample covariance needs at least 2; use shrinkage=ledoit_wolf")
        cov = s.m2 / (n - 1)
    else:
        emp = s.m2 / n
        trace = np.einsum("pcc->p", emp)
        mu = trace / c
        s_sq = np.einsum("pcd,pcd->p", emp, emp)
        delta = (s_sq - 2.0 * mu * trace + c * mu * mu) / c
        beta = np.minimum((s.q / n - s_sq) / (c * n), delta)
        shrink = np.where(delta > 0, beta / np.where(delta > 0, delta, 1.0), 0.0) if c > 1 else np.zeros_like(delta)
        cov = (1.0 - shrink)[:, None, None] * emp + (shrink * mu)[:, None, None] * eye
    return cov + ridge * eye if ridge > 0 else cov


def width(channels: int) -> int:
    """K, the columns of the packed (P, K) array for C channels."""
    return 2 * channels + channels * (channels + 1) // 2 + 1


def pack(s: GaussianStats) -> np.ndarray:
    """→ (P, K) float64: mean | m2's upper triangle (row-major) | t | q."""
    iu = np.triu_indices(s.channels)
    return np.ascontiguousarray(np.concatenate([s.mean, s.m2[:, iu[0], iu[1]], s.t, s.q[:, None]], axis=1))


def unpack(array: np.ndarray, channels: int, count: int) -> GaussianStats:
    """(P, K) packed statistics of ``channels`` channels and ``count`` samples → GaussianStats."""
    c = channels
    if array.ndim != 2 or array.shape[1] != width(c) or array.dtype != np.float64:
        raise InputError(f"{STATS_FILE}: {array.shape} {array.dtype}, expected (P, {width(c)}) float64 for {c} channels; "
                         "re-export the artifact with ad-export")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise InputError(f"statistics count {count!r}: expected a positive integer; re-export the artifact")
    if not np.isfinite(array).all():
        raise InputError(f"{STATS_FILE}: holds NaN or Inf; re-export the artifact with ad-export")
    k = c * (c + 1) // 2
    mean, tri, t, q = array[:, :c], array[:, c:c + k], array[:, c + k:2 * c + k], array[:, -1]
    iu = np.triu_indices(c)
    m2 = np.empty((len(array), c, c))
    m2[:, iu[0], iu[1]] = tri
    m2[:, iu[1], iu[0]] = tri
    return GaussianStats(int(count), mean.copy(), m2, t.copy(), q.copy())
