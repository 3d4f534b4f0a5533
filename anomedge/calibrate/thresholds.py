"""Decision thresholds from scores (numpy only).

Rule everywhere in anomedge: a part is NG (defective) iff ``score > threshold``; a threshold equal
to the highest good score therefore accepts every good part.

One table, :data:`METHODS`, maps a method name to a function with the uniform signature
``fn(good_scores, val=None, **params) -> ThresholdResult`` where ``val`` is ``None`` or a
``(labels, scores)`` pair of a labelled validation set (labels 1 = defective).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from anomedge.calibrate.metrics import Rate, _as_labels, _as_scores, f1_max
from anomedge.errors import InputError

__all__ = [
    "ThresholdResult",
    "quantile_threshold",
    "f1_threshold",
    "frr_threshold",
    "METHODS",
    "compute_threshold",
    "MIN_GOOD",
    "pixel_threshold_good",
    "resolution_warning",
    "MIN_HOLDOUT",
]

MIN_GOOD = 20
"""Below this many good scores a threshold is unstable; a warning says so."""
MIN_HOLDOUT = 30
"""ad-export warns when its default threshold comes from fewer held-out good images than this."""


def resolution_warning(n: int, tail: float, what: str) -> str | None:
    """The warning text when ``n`` good scores cannot resolve a rejection rate of ``tail`` (< 1/n), else None.

    With n scores the smallest non-zero false-reject rate one can observe is 1/n, so a target below it
    ends at the highest good score; showing a rate ≤ ``tail`` at 95 % with no rejection needs
    about 3/tail images (the rule of three).
    """
    if n <= 0 or not 0 < tail < 1 / n:
        return None
    upper = Rate(0, n).interval[1]
    return (f"{n} good images cannot resolve {what} (a false-reject rate of {100 * tail:.2g} %): the smallest "
            f"non-zero rate {n} images can show is 1/{n} = {100 / n:.2g} %, so the threshold ends at (or next to) "
            f"the highest good score, and even 0 of {n} rejected allows a rate up to {100 * upper:.2g} % (95 %); "
            f"score at least "
            f"{math.ceil(1 / tail)} good images, {math.ceil(3 / tail)} to show the rate at 95 %")


@dataclass(frozen=True)
class ThresholdResult:
    """A threshold and how it was obtained. ``note`` explains a fallback (``None`` otherwise)."""

    value: float
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    n_good: int = 0
    n_defect: int = 0
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (plain floats/ints/strings)."""
        return asdict(self)


def _good(good_scores, name: str = "good_scores") -> np.ndarray:
    g = _as_scores(good_scores, name).ravel()
    if g.size == 0:
        raise InputError(f"{name} is empty: score at least one good image ({MIN_GOOD}+ recommended)")
    if g.size < MIN_GOOD:
        warnings.warn(
            f"threshold from only {g.size} good scores (fewer than {MIN_GOOD}): it will be unstable; "
            "calibrate on more good images",
            stacklevel=3,
        )
    return g


def quantile_threshold(good_scores, q: float = 0.99) -> ThresholdResult:
    """``np.quantile(good_scores, q)`` (linear interpolation); ``q`` in (0, 1]; ``q=1`` is the max."""
    try:
        qf = float(q)
    except (TypeError, ValueError):
        raise InputError(f"q must be a number in (0, 1], got {q!r}") from None
    if not 0.0 < qf <= 1.0:
        raise InputError(f"q must be in (0, 1] (e.g. 0.99), got {q}")
    g = _good(good_scores)
    note = resolution_warning(g.size, 1 - qf, f"the {qf:g} quantile")
    if note:
        warnings.warn(note, stacklevel=2)
    value = float(np.quantile(g, qf))
    return ThresholdResult(value, "quantile", {"q": qf, "false_reject": _false_reject(g, value)}, n_good=int(g.size))


def frr_threshold(good_scores, target: float = 0.01) -> ThresholdResult:
    """Lowest threshold that rejects at most ``target`` of the good parts (false-reject rate).

    With ``k = floor(target * n)`` allowed rejections it is the ``(k+1)``-th highest good score, so
    ``mean(good_scores > threshold) <= target`` holds exactly, ties included.
    """
    try:
        tf = float(target)
    except (TypeError, ValueError):
        raise InputError(f"target must be a number in [0, 1), got {target!r}") from None
    if not 0.0 <= tf < 1.0:
        raise InputError(f"target must be a false-reject rate in [0, 1) (e.g. 0.01), got {target}")
    g = _good(good_scores)
    note = resolution_warning(g.size, tf, f"a target of {tf:g}")
    if note:
        warnings.warn(note, stacklevel=2)
    k = int(math.floor(tf * g.size + 1e-9))  # tolerate 0.29 * 100 = 28.999999999999996
    value = float(np.sort(g)[::-1][k])
    achieved = float(np.count_nonzero(g > value)) / g.size
    return ThresholdResult(value, "frr", {"target": tf, "achieved": achieved, "false_reject": _false_reject(g, value)},
                           n_good=int(g.size), note=note)


def f1_threshold(labels, scores) -> ThresholdResult:
    """F1-max threshold on a labelled validation set (labels 1 = defective).

    Without defective samples F1 is undefined: the threshold falls back to the highest good score
    and ``note`` says so. Without good samples the highest-F1 threshold flags everything; a note
    says the set has no good parts.
    """
    y = _as_labels(labels, "labels").ravel()
    s = _as_scores(scores, "scores").ravel()
    if y.shape != s.shape:
        raise InputError(f"labels and scores must have the same shape, got {y.shape} and {s.shape}")
    n_defect = int(np.count_nonzero(y))
    n_good = int(y.size - n_defect)
    if n_good == 0:
        raise InputError(
            f"the validation set has no good samples ({n_defect} defective): F1 cannot place a threshold; "
            "add good images to the validation set"
        )
    _good(s[~y], "validation good scores")  # the warning on few goods
    if n_defect == 0:
        return ThresholdResult(
            float(s.max()),
            "f1",
            {"f1": None},
            n_good=n_good,
            n_defect=0,
            note=f"validation set has no defective samples ({n_good} good): threshold = max good score",
        )
    f1, value = f1_max(y, s)
    miss = Rate(int(np.count_nonzero(s[y] <= value)), n_defect).to_dict()
    return ThresholdResult(value, "f1", {"f1": f1, "false_reject": _false_reject(s[~y], value), "miss": miss},
                           n_good=n_good, n_defect=n_defect)


def _false_reject(good: np.ndarray, threshold: float) -> dict[str, Any]:
    """Good scores above ``threshold``: {k, n, rate, ci95 (Wilson)}."""
    return Rate(int(np.count_nonzero(good > threshold)), int(good.size)).to_dict()


def pixel_threshold_good(maps, q: float = 0.99) -> float:
    """Pixel threshold from good anomaly maps (N,H,W): the ``q`` quantile of the per-image maxima.

    So a fraction ``q`` of the good images has no pixel above it: no box at all on them, borders
    included. (A quantile over all pixels puts 1 − q of every good image's pixels above the
    threshold by construction — on synthetic:brick those were mostly border pixels, and most NG
    boxes lay on no defect.)
    """
    m = _as_scores(maps, "good maps")
    if m.ndim < 2 or m.shape[0] == 0:
        raise InputError(f"good maps of shape {m.shape}: expected (N, H, W) with N ≥ 1")
    return float(np.quantile(m.reshape(m.shape[0], -1).max(axis=1), q))


# ------------------------------------------------------------------ uniform table


def _quantile(good_scores, val=None, q: float = 0.99) -> ThresholdResult:
    return quantile_threshold(good_scores, q)


def _frr(good_scores, val=None, target: float = 0.01) -> ThresholdResult:
    return frr_threshold(good_scores, target)


def _f1(good_scores, val=None) -> ThresholdResult:
    """F1-max on ``val``; ``good_scores`` (may be None) only widens the no-defect fallback."""
    if val is None:
        raise InputError("method 'f1' needs a labelled validation set (labels, scores): pass --val")
    try:
        labels, scores = val
    except (TypeError, ValueError):
        raise InputError("val must be a (labels, scores) pair") from None
    res = f1_threshold(labels, scores)
    if res.n_defect == 0 and good_scores is not None and np.size(good_scores):
        g = _as_scores(good_scores, "good_scores").ravel()
        value = max(res.value, float(g.max()))
        note = (
            f"validation set has no defective samples ({res.n_good} good): "
            f"threshold = max of {res.n_good + g.size} good scores"
        )
        res = ThresholdResult(value, "f1", res.params, res.n_good + int(g.size), 0, note)
    return res


METHODS: dict[str, Callable[..., ThresholdResult]] = {
    "quantile": _quantile,
    "f1": _f1,
    "frr": _frr,
}
"""Method name → ``fn(good_scores, val=None, **params) -> ThresholdResult``."""


def compute_threshold(method: str, good_scores, val=None, **params) -> ThresholdResult:
    """Look ``method`` up in :data:`METHODS` and run it; unknown names/params → InputError."""
    fn = METHODS.get(method)
    if fn is None:
        raise InputError(f"unknown threshold method {method!r}: choose one of {', '.join(METHODS)}")
    try:
        return fn(good_scores, val, **params)
    except TypeError as e:
        if "unexpected keyword" not in str(e):
            raise
        raise InputError(f"threshold method {method!r} does not take parameters {sorted(params)}") from None
