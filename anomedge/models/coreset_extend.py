"""Grow a PatchCore bank from new good patches: greedy k-center continued from the existing bank (numpy).

The greedy coreset (``coreset.py``) stops at a coverage radius r: every training patch lies within r of
a bank row. ``coverage_radius`` measures it at fit time in the feature space the runtime scores in (exact
L2 kNN, ``scoring.kernels.KnnIndex``) and the artifact records it (``model.fit.coverage_radius``).

Update, for new good patches X (n,D):

1. ``FarPatches`` streams X batch by batch: the distance of each patch to its nearest bank row; only those
   farther than r are kept as candidates (patches already covered can never be picked: bounded memory);
2. ``extend`` continues the greedy rule from the bank: pick the candidate farthest from the bank ∪ the
   picks so far, add it, lower every candidate's distance, until all candidates lie within r (the bank
   covers the new images as it covered the old ones) or ``max_new`` rows were added.

After it, every new patch scores ≤ max(r, ``residual``) against the grown bank; ``residual`` > r only
when ``max_new`` stopped it (reported, and recorded as the new radius). Rows are only ever added.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..scoring.kernels import KnnIndex

MAX_CANDIDATES = 1 << 18  # far patches held at once (262,144 × D float32: 160 MB at D = 152)


def coverage_radius(patches: np.ndarray, bank: np.ndarray) -> float:
    """max over (n,D) ``patches`` of the L2 distance to the nearest row of ``bank`` (M,D)."""
    dist = KnnIndex(np.ascontiguousarray(bank)).search(np.ascontiguousarray(patches, np.float32), 1)
    return float(dist.max()) if len(dist) else 0.0


def bank_spacing(bank: np.ndarray) -> float:
    """The smallest distance between two bank rows — the fallback radius for artifacts exported before
    ``coverage_radius`` was recorded: each greedy pick lies at least its own pick distance from all earlier
    ones and pick distances only fall, so this is ≥ the greedy's last pick distance (in the space the greedy
    ran: a conservative stand-in that adds fewer rows)."""
    if len(bank) < 2:
        return 0.0
    return float(KnnIndex(np.ascontiguousarray(bank)).search(np.ascontiguousarray(bank, np.float32), 2)[:, 1].min())


class FarPatches:
    """Accumulates the new patches farther than ``radius`` from ``bank`` (batch by batch)."""

    def __init__(self, bank: np.ndarray, radius: float):
        self.index = KnnIndex(np.ascontiguousarray(bank))
        self.radius = float(radius)
        self.rows: list[np.ndarray] = []
        self.dist2: list[np.ndarray] = []
        self.seen = 0
        self.kept = 0

    def add(self, patches: np.ndarray) -> None:
        """(n,D) float32 patches of new good images."""
        patches = np.ascontiguousarray(patches, np.float32)
        dist = self.index.search(patches, 1)[:, 0].astype(np.float64)
        far = dist > self.radius
        self.seen += len(patches)
        self.kept += int(far.sum())
        if self.kept > MAX_CANDIDATES:
            raise InputError(f"{self.kept} of the new patches lie farther from the bank than its coverage radius "
                             f"{self.radius:.4g} (at most {MAX_CANDIDATES} are held): these images are unlike the "
                             "model's; refit with ad-export, or update with fewer images at a time")
        if far.any():
            self.rows.append(patches[far])
            self.dist2.append(dist[far] ** 2)

    def candidates(self) -> tuple[np.ndarray, np.ndarray]:
        """((m,D) float32 candidates, (m,) float64 squared distances to the bank)."""
        if not self.rows:
            return np.empty((0, self.index.dim), np.float32), np.empty(0)
        return np.concatenate(self.rows), np.concatenate(self.dist2)


@dataclass(frozen=True)
class Extension:
    picks: np.ndarray  # (a,) int64 indices into the candidates, in pick order
    residual: float  # max distance of a candidate to the grown bank (≤ radius unless max_new stopped it)


def extend(candidates: np.ndarray, dist2: np.ndarray, radius: float, max_new: int) -> Extension:
    """Greedy k-center picks among ``candidates`` (m,D) whose squared distances to the bank are ``dist2``
    (m,): farthest first, until every candidate is within ``radius`` or ``max_new`` picks were made.
    Distances are Σ(x − c)² in float32 differences accumulated in float64 (no norm cancellation)."""
    if isinstance(max_new, bool) or not isinstance(max_new, (int, np.integer)) or max_new < 0:
        raise InputError(f"max_new: got {max_new!r}, expected an integer >= 0")
    x = np.ascontiguousarray(candidates, np.float32)
    mind = np.array(dist2, np.float64, copy=True)
    r2 = float(radius) ** 2
    picks: list[int] = []
    while len(mind) and len(picks) < max_new:
        j = int(np.argmax(mind))
        if not mind[j] > r2:
            break
        picks.append(j)
        diff = x - x[j]
        np.minimum(mind, np.einsum("md,md->m", diff, diff, dtype=np.float64), out=mind)
        mind[j] = -math.inf
    top = float(mind.max()) if len(mind) else -math.inf
    residual = math.sqrt(top) if top > 0 else 0.0
    return Extension(np.asarray(picks, np.int64), residual)
