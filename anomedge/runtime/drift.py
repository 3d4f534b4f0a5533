"""Drift watch: is the line still the one the artifact was calibrated on? (numpy + OpenCV only)

At calibration (``calibrate.apply``) ``calibration_block(good_scores, input_stats)`` stores in
``thresholds.drift``: a quantile sample of the good image scores (at most ``MAX_SAMPLE`` values, sorted)
and, per input statistic, the calibration median and band [q01, q99] of its per-frame values. It lives in
the editable thresholds block (it describes the calibration, not the model) and is schema-checked there.

``DriftWatch(block)`` keeps the last ``window`` frames of the decision stream and, once it holds at least
``min_frames`` of them, judges three checks on every frame (``update(record, image)``):

- ``score``: two-sample Kolmogorov–Smirnov statistic D between the window's scores and the calibration
  sample; alarm when D exceeds the critical value at ``alpha`` (c(α)·√((n+m)/(n·m)), c = √(−ln(α/2)/2)).
  The population stability index over 10 equal-frequency bins of the calibration sample is reported too
  (PSI > 0.25 is the usual "significant shift" rule; on small samples it is noisy, so it is not the alarm).
- ``ng_rate``: the NG share of the window's OK/NG records with its Wilson interval at ``z``; alarm when
  the expected rate (the share of the calibration sample above the threshold in force) lies outside it.
- ``inputs``: ``input_stats(image)`` = mean brightness, contrast (std) and focus (variance of the
  Laplacian) of the grey frame (downscaled to at most ``STATS_SIDE`` px); alarm when the window's median
  of a statistic leaves its calibration band.

``update`` returns the alarm dict (``{"checks": [...], ...}``) while any check is in alarm, else None: the
runner puts it into the record as ``drift`` (only then: records stay small) and logs one warning line when
the alarm starts and one when it ends, and marks those two records ``drift_event`` "alarm" / "clear" (the
webhook and MQTT outputs send them, NG or not). ``status()`` is every figure, for ``/api/status`` and ``/metrics``.
"""

from __future__ import annotations

import collections
import logging
import math
from typing import Any

import cv2
import numpy as np

log = logging.getLogger("anomedge.drift")

MAX_SAMPLE = 500
STATS = ("brightness", "contrast", "focus")
STATS_SIDE = 512
PSI_BINS = 10
WINDOW, MIN_FRAMES, ALPHA, Z = 200, 50, 1e-3, 3.29  # z = 3.29: two-sided 99.9 %


def input_stats(image: np.ndarray) -> np.ndarray:
    """(H,W[,C]) uint8 frame → (3,) float64: mean brightness, contrast (std), focus (variance of the Laplacian)."""
    grey = image if image.ndim == 2 else cv2.cvtColor(np.ascontiguousarray(image[:, :, :3]), cv2.COLOR_BGR2GRAY)
    scale = STATS_SIDE / max(grey.shape[:2])
    if scale < 1:
        grey = cv2.resize(grey, (max(1, round(grey.shape[1] * scale)), max(1, round(grey.shape[0] * scale))),
                          interpolation=cv2.INTER_AREA)
    mean, std = cv2.meanStdDev(grey)
    focus = cv2.Laplacian(grey, cv2.CV_64F).var()
    return np.array([float(mean[0, 0]), float(std[0, 0]), float(focus)])


def calibration_block(good_scores: np.ndarray, stats: np.ndarray | None) -> dict[str, Any]:
    """Good scores (N,) and their frames' ``input_stats`` (N,3) (or None) → the ``thresholds.drift`` block."""
    scores = np.sort(np.asarray(good_scores, np.float64)[np.isfinite(good_scores)])
    if len(scores) > MAX_SAMPLE:
        scores = np.quantile(scores, np.linspace(0, 1, MAX_SAMPLE))
    block: dict[str, Any] = {"scores": [float(f"{s:.7g}") for s in scores], "n_good": int(len(good_scores))}
    if stats is not None and len(stats):
        block["inputs"] = {name: {"median": float(np.median(col)), "band": [float(np.quantile(col, 0.01)),
                                                                             float(np.quantile(col, 0.99))]}
                           for name, col in zip(STATS, np.asarray(stats, np.float64).T)}
    return block


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov–Smirnov D = sup |F_a − F_b| (exact on the pooled values)."""
    a, b = np.sort(a), np.sort(b)
    pooled = np.concatenate([a, b])
    return float(np.max(np.abs(np.searchsorted(a, pooled, "right") / len(a) - np.searchsorted(b, pooled, "right") / len(b))))


def ks_critical(n: int, m: int, alpha: float = ALPHA) -> float:
    return math.sqrt(-math.log(alpha / 2) / 2) * math.sqrt((n + m) / (n * m))


def psi(reference: np.ndarray, window: np.ndarray, bins: int = PSI_BINS) -> float:
    """Population stability index Σ (w − r)·ln(w / r) over equal-frequency bins of ``reference``
    (shares floored at 1e-4 so an empty bin stays finite)."""
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1))[1:-1])
    r = np.bincount(np.searchsorted(edges, reference, "right"), minlength=len(edges) + 1) / len(reference)
    w = np.bincount(np.searchsorted(edges, window, "right"), minlength=len(edges) + 1) / len(window)
    r, w = np.maximum(r, 1e-4), np.maximum(w, 1e-4)
    return float(np.sum((w - r) * np.log(w / r)))


def wilson(k: int, n: int, z: float = Z) -> tuple[float, float]:
    """Wilson score interval of a rate k/n at ``z``."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


class DriftWatch:
    """The rolling window over the decision stream and its three checks (module docstring)."""

    def __init__(self, block: dict[str, Any], window: int = WINDOW, min_frames: int = MIN_FRAMES, alpha: float = ALPHA,
                 z: float = Z):
        self.reference = np.asarray(block.get("scores") or [], np.float64)
        self.inputs = block.get("inputs") or {}
        self.window, self.min_frames, self.alpha, self.z = int(window), int(min(min_frames, window)), alpha, z
        self.scores: collections.deque = collections.deque(maxlen=self.window)
        self.labels: collections.deque = collections.deque(maxlen=self.window)
        self.stats: collections.deque = collections.deque(maxlen=self.window)
        self.threshold: float | None = None
        self.alarm: dict[str, Any] | None = None
        self.alarms = 0  # alarms raised so far
        self.event: str | None = None  # "alarm" / "clear" on the frame where the alarm starts / ends
        self._status: dict[str, Any] = {"frames": 0, "alarm": False}

    @classmethod
    def from_thresholds(cls, thresholds: dict[str, Any] | None, **options: Any) -> "DriftWatch | None":
        block = (thresholds or {}).get("drift")
        return cls(block, **options) if isinstance(block, dict) and block.get("scores") else None

    def update(self, record: dict[str, Any], image: np.ndarray | None) -> dict[str, Any] | None:
        """Add one record (and its inspected frame) → the alarm dict while in alarm, else None."""
        if record.get("label") in ("OK", "NG") and "error" not in record and record.get("score") is not None:
            self.scores.append(float(record["score"]))
            self.labels.append(record["label"] == "NG")
            self.threshold = record.get("threshold", self.threshold)
        if image is not None and self.inputs:
            self.stats.append(input_stats(image))
        status = self._judge()
        was = self.alarm is not None
        self.alarm = _alarm(status) if status["in_alarm"] else None
        self.event = "alarm" if self.alarm and not was else "clear" if was and not self.alarm else None
        if self.alarm and not was:
            self.alarms += 1
            log.warning("drift: %s out of the calibration band at frame %s (%s)", ", ".join(self.alarm["checks"]),
                        record.get("index"), _describe(status))
        elif was and not self.alarm:
            log.warning("drift: back inside the calibration band at frame %s", record.get("index"))
        self._status = status
        return self.alarm

    def _judge(self) -> dict[str, Any]:
        n = len(self.scores)
        status: dict[str, Any] = {"frames": n, "window": self.window, "in_alarm": []}
        if n >= self.min_frames and len(self.reference):
            window = np.fromiter(self.scores, np.float64)
            d, crit = ks_statistic(window, self.reference), ks_critical(n, len(self.reference), self.alpha)
            status["score"] = {"ks": round(d, 4), "ks_critical": round(crit, 4), "psi": round(psi(self.reference, window), 4)}
            if d > crit:
                status["in_alarm"].append("score")
            if self.threshold is not None:
                k = int(sum(self.labels))
                low, high = wilson(k, n, self.z)
                expected = float(np.mean(self.reference > self.threshold))
                status["ng_rate"] = {"rate": round(k / n, 4), "low": round(low, 4), "high": round(high, 4),
                                     "expected": round(expected, 4)}
                if not low <= expected <= high:
                    status["in_alarm"].append("ng_rate")
        if len(self.stats) >= self.min_frames:
            medians = np.median(np.stack(self.stats), axis=0)
            inputs = {}
            for name, value in zip(STATS, medians):
                if name in self.inputs:
                    low, high = self.inputs[name]["band"]
                    inputs[name] = {"median": round(float(value), 4), "band": [low, high],
                                    "calibration": self.inputs[name]["median"]}
                    if not low <= value <= high:
                        status["in_alarm"].append(name)
            status["inputs"] = inputs
        status["alarm"] = bool(status["in_alarm"])
        return status

    def status(self) -> dict[str, Any]:
        """Every figure of the last judgement, plus ``alarms`` (how many were raised)."""
        return {**self._status, "alarms": self.alarms}


def _alarm(status: dict[str, Any]) -> dict[str, Any]:
    """The record's ``drift`` field: the checks in alarm and their figures."""
    checks = status["in_alarm"]
    alarm: dict[str, Any] = {"checks": checks, **{k: status[k] for k in ("score", "ng_rate") if k in checks}}
    inputs = {k: v for k, v in status.get("inputs", {}).items() if k in checks}
    if inputs:
        alarm["inputs"] = inputs
    return alarm


def _describe(status: dict[str, Any]) -> str:
    parts = []
    if "score" in status:
        s = status["score"]
        parts.append(f"score KS {s['ks']} (critical {s['ks_critical']}), PSI {s['psi']}")
    if "ng_rate" in status:
        r = status["ng_rate"]
        parts.append(f"NG rate {r['rate']:.1%} [{r['low']:.1%}, {r['high']:.1%}] vs expected {r['expected']:.1%}")
    for name, value in status.get("inputs", {}).items():
        parts.append(f"{name} {value['median']:.4g} (band {value['band'][0]:.4g}–{value['band'][1]:.4g})")
    return "; ".join(parts)
