"""Score normalisation so that 0.5 is the decision threshold (numpy only).

``Normalizer(min, threshold, max)`` is piecewise linear: ``min → 0``, ``threshold → 0.5``,
``max → 1``, extended linearly beyond ``min``/``max`` (then optionally clipped to [0, 1]).
It is monotone non-decreasing and exact at the threshold, so ``score > threshold`` implies
``normalised >= 0.5`` and, away from rounding (a score within ~1e-16 x (max - threshold) of the
threshold may normalise to exactly 0.5), ``normalised > 0.5``. Decide on the raw score; the
normalised one is for display and for comparing detectors. At run time it is read from metadata by
``anomedge.runtime.decision.Decision`` (the one place thresholds are interpreted).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from anomedge.calibrate.metrics import _as_scores
from anomedge.errors import InputError

__all__ = ["Normalizer", "fit_normalizer"]


def _finite(name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"normaliser {name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise InputError(f"normaliser {name} must be finite, got {v}")
    return v


@dataclass(frozen=True)
class Normalizer:
    """Piecewise-linear map with ``min < threshold < max`` (raw score units)."""

    min: float
    threshold: float
    max: float

    def __post_init__(self) -> None:
        lo, t, hi = (_finite(k, getattr(self, k)) for k in ("min", "threshold", "max"))
        if not lo < t < hi:
            raise InputError(
                f"normaliser needs min < threshold < max, got {lo} / {t} / {hi}: "
                "use fit_normalizer, which widens degenerate ranges"
            )
        object.__setattr__(self, "min", lo)
        object.__setattr__(self, "threshold", t)
        object.__setattr__(self, "max", hi)

    def apply(self, scores, clip: bool = True):
        """Normalise ``scores`` (any shape; a scalar gives a float); ``threshold`` maps to 0.5 exactly."""
        s = _as_scores(scores, "scores")
        lo, t, hi = self.min, self.threshold, self.max
        below = 0.5 * ((s - lo) / (t - lo))
        above = 0.5 + 0.5 * ((s - t) / (hi - t))
        out = np.where(s < t, below, above)
        if clip:
            out = np.clip(out, 0.0, 1.0)
        return float(out) if out.ndim == 0 else out

    __call__ = apply

    def to_dict(self) -> dict[str, float]:
        return {"min": self.min, "threshold": self.threshold, "max": self.max}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Normalizer":
        """Inverse of :meth:`to_dict`; missing keys → InputError naming them."""
        if not isinstance(d, dict):
            raise InputError(f"normaliser must be a dict with min/threshold/max, got {type(d).__name__}")
        missing = [k for k in ("min", "threshold", "max") if k not in d]
        if missing:
            raise InputError(f"normaliser dict is missing {', '.join(missing)} (expected min, threshold, max)")
        return cls(d["min"], d["threshold"], d["max"])


def fit_normalizer(good_scores, threshold: float, all_scores=None) -> Normalizer:
    """Normaliser with ``min`` = lowest good score, ``max`` = highest of ``all_scores``
    (or of ``good_scores`` when not given) and the given ``threshold``.

    A degenerate side (e.g. ``threshold`` equal to the highest score, as the ``frr``/``quantile``
    methods with no allowed rejections give) is widened symmetrically: ``max = 2·threshold − min``
    (or ``min = 2·threshold − max``); if both sides are empty the span is ``max(|threshold|, 1)``.
    """
    g = _as_scores(good_scores, "good_scores").ravel()
    if g.size == 0:
        raise InputError("good_scores is empty: need good scores to fit the normaliser")
    t = _finite("threshold", threshold)
    lo = float(g.min())
    hi = float(g.max())
    if all_scores is not None:
        a = _as_scores(all_scores, "all_scores").ravel()
        if a.size:
            hi = max(hi, float(a.max()))
    lo_ok, hi_ok = lo < t, hi > t
    if lo_ok and not hi_ok:
        hi = t + (t - lo)
    elif hi_ok and not lo_ok:
        lo = t - (hi - t)
    # Both sides empty, or a widening lost to rounding: fall back to a span of max(|t|, 1).
    if not lo < t:
        lo = t - max(abs(t), 1.0)
    if not hi > t:
        hi = t + max(abs(t), 1.0)
    return Normalizer(lo, t, hi)
