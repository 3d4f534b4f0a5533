"""The run loop: frames from a source → inspector → one decision record per frame → sinks.

A frame that fails to decode (or has an unusable shape/dtype, or does not contain the ROI) becomes
an ``ERROR`` record and the loop goes on. A record holds: source, index, timestamp (capture time,
epoch seconds), score, ``score_normalized`` (only if metadata ``thresholds.normalization`` has
min/threshold/max: piecewise linear, threshold → 0.5, clipped to [0, 1]), label OK/NG, threshold,
``ms`` per stage (+ ``total``; NG: ``evidence_ms`` for boxes and saved files), ``dropped`` (frames dropped by the capture queue so far) and, for NG,
``boxes`` ([x, y, w, h] in frame pixels, of the map thresholded at ``thresholds.pixel`` or else the
image threshold) and ``overlay`` (the saved PNG) when evidence is saved.

``Runner(inspector, sinks, ...)`` owns the loop, the ``Summary`` (shared with the live view) and a lock
so that the live view's ``POST /api/inspect`` can use the same inspector and sinks.
``run(inspector, frames, sinks)`` and ``decision_record(inspector, frame)`` are the short forms.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

from ..errors import AnomedgeError, InputError
from .evidence import EvidenceWriter, frame_map, heat_range, regions
from .pipeline import Inspector
from .sources import Frame, crop_roi

Sink = Callable[[dict[str, Any]], None]
Observer = Callable[[dict[str, Any], "np.ndarray | None", "np.ndarray | None"], None]
LATENCY_WINDOW = 100_000  # percentiles over the last frames: memory stays flat on month-long runs


@dataclass
class Summary:
    """Counters of a run; ``latencies_ms`` keeps the last ``LATENCY_WINDOW`` inspection latencies."""

    frames: int = 0
    ng: int = 0
    errors: int = 0
    dropped: int = 0
    reconnects: int = 0
    latencies_ms: collections.deque = field(default_factory=lambda: collections.deque(maxlen=LATENCY_WINDOW))
    started: float = field(default_factory=time.time)

    def percentile(self, q: float) -> float:
        return float(np.percentile(np.fromiter(self.latencies_ms, float), q)) if self.latencies_ms else float("nan")

    def count(self, record: dict[str, Any]) -> None:
        self.frames += 1
        self.ng += record["label"] == "NG"
        self.errors += record["label"] == "ERROR"
        if "ms" in record:
            self.latencies_ms.append(record["ms"]["total"])

    def as_dict(self) -> dict[str, Any]:
        return {"frames": self.frames, "ok": self.frames - self.ng - self.errors, "ng": self.ng, "errors": self.errors,
                "dropped": self.dropped, "reconnects": self.reconnects, "p50_ms": _finite(self.percentile(50)),
                "p99_ms": _finite(self.percentile(99)), "uptime_s": round(time.time() - self.started, 3)}

    def line(self) -> str:
        return (f"{self.frames} frames: {self.frames - self.ng - self.errors} OK, {self.ng} NG, {self.errors} errors; "
                f"latency p50 {self.percentile(50):.1f} ms, p99 {self.percentile(99):.1f} ms; "
                f"{self.dropped} dropped, {self.reconnects} reconnects")


def _finite(value: float) -> float | None:
    return None if not np.isfinite(value) else round(value, 3)


def normalizer(thresholds: dict[str, Any], threshold: float | None) -> Callable[[float], float] | None:
    """Piecewise-linear score normaliser from ``thresholds["normalization"]`` = {min, threshold, max},
    with its threshold replaced by the one in use when that lies strictly between min and max; None
    when there is no usable block."""
    block = thresholds.get("normalization")
    try:
        lo, t, hi = (float(block[k]) for k in ("min", "threshold", "max"))  # type: ignore[index]
    except (TypeError, KeyError, ValueError):
        return None
    if threshold is not None and lo < threshold < hi:
        t = float(threshold)
    if not lo < t < hi:
        return None

    def apply(score: float) -> float:
        value = 0.5 * (score - lo) / (t - lo) if score < t else 0.5 + 0.5 * (score - t) / (hi - t)
        return float(min(max(value, 0.0), 1.0))

    return apply


class Runner:
    """Frames → records → sinks, with optional ROI crop, NG evidence and observers (live view)."""

    def __init__(self, inspector: Inspector, sinks: Iterable[Sink] = (), *, roi: tuple[int, int, int, int] | None = None,
                 evidence: EvidenceWriter | None = None, observers: Iterable[Observer] = ()):
        self.inspector = inspector
        self.sinks = list(sinks)
        self.roi = roi
        self.evidence = evidence
        self.observers = list(observers)
        self.summary = Summary()
        self.lock = threading.Lock()
        thresholds = inspector.artifact.metadata.thresholds
        self.threshold = inspector.threshold
        pixel = thresholds.get("pixel")
        self.pixel_threshold = float(pixel) if pixel is not None else self.threshold
        self.normalize = normalizer(thresholds, self.threshold)
        calibrated = thresholds.get("image", self.threshold)  # colours stay calibrated under --threshold
        self.heat_range = heat_range(thresholds, float(calibrated) if calibrated is not None else 1.0)

    def inspect(self, frame: Frame, dropped: int | None = None) -> tuple[dict[str, Any], np.ndarray | None, np.ndarray | None]:
        """One frame → (record, the inspected image (ROI applied) or None, its (h,w) anomaly map or None)."""
        record: dict[str, Any] = {"source": frame.source, "index": frame.index, "timestamp": round(frame.timestamp, 6)}
        if dropped is not None:
            record["dropped"] = dropped
        image = small_map = None
        if frame.error is None:
            try:
                image = crop_roi(frame.image, self.roi)
                start = time.perf_counter()
                result = self.inspector.inspect([image])
                total = (time.perf_counter() - start) * 1e3
                score = float(result.scores[0])
                small_map = result.maps[0]
                record.update(score=score)
                if self.normalize is not None:
                    record["score_normalized"] = round(self.normalize(score), 6)
                record.update(label=self.inspector.decide(score), threshold=self.threshold,
                              ms={**{k: round(v, 3) for k, v in result.timings_ms.items()}, "total": round(total, 3)})
                if record["label"] == "NG":
                    self._evidence(record, image, small_map)
                elif self.evidence is not None:
                    self._save(record, image, None)
                return record, image, small_map
            except InputError as exc:
                frame.error = str(exc)
        record.update(label="ERROR", error=frame.error)
        return record, None, None

    def _evidence(self, record: dict[str, Any], image: np.ndarray, small_map: np.ndarray) -> None:
        start = time.perf_counter()
        full = frame_map(small_map, image.shape[:2])
        record["boxes"] = regions(full, self.pixel_threshold) if self.pixel_threshold is not None else []
        if self.evidence is not None:
            self._save(record, image, full)
        record["evidence_ms"] = round((time.perf_counter() - start) * 1e3, 3)

    def _save(self, record: dict[str, Any], image: np.ndarray, full: np.ndarray | None) -> None:
        try:
            path = self.evidence.save(image, full, record, *self.heat_range)
        except (OSError, AnomedgeError) as exc:  # a full disk must not stop the line: say it in the record
            record["evidence_error"] = str(exc)
            return
        if path:
            record["overlay"] = path

    def emit(self, record: dict[str, Any]) -> None:
        for sink in self.sinks:
            try:
                sink(record)
            except OSError as exc:
                raise AnomedgeError(f"cannot write the decision record ({exc.strerror or exc}); "
                                    "check free space and permissions of the output files") from exc

    def process(self, frame: Frame, dropped: int | None = None) -> dict[str, Any]:
        """Inspect, write to every sink, count, tell the observers; returns the record."""
        return self.process_full(frame, dropped)[0]

    def process_full(self, frame: Frame, dropped: int | None = None):
        """As ``process``; returns (record, inspected image or None, (h,w) anomaly map or None)."""
        with self.lock:
            record, image, small_map = self.inspect(frame, dropped)
            self.emit(record)
            self.summary.count(record)
        for observer in self.observers:
            observer(record, image, small_map)
        return record, image, small_map

    def run(self, frames: Iterable[Frame], *, stop_event: threading.Event | None = None, max_frames: int | None = None,
            on_done: Callable[[Frame], None] | None = None, dropped: Callable[[], int] | None = None,
            reconnects: Callable[[], int] | None = None) -> Summary:
        """Process ``frames`` until they end, ``stop_event`` is set (after the frame in flight) or
        ``max_frames`` records were written. ``on_done(frame)`` runs after a frame's record is written."""
        for frame in frames:
            if dropped is not None:
                self.summary.dropped = dropped()
            if reconnects is not None:
                self.summary.reconnects = reconnects()
            self.process(frame, self.summary.dropped)
            if on_done is not None:
                on_done(frame)
            if (max_frames is not None and self.summary.frames >= max_frames) or (stop_event is not None and stop_event.is_set()):
                break
        if dropped is not None:
            self.summary.dropped = dropped()
        if reconnects is not None:
            self.summary.reconnects = reconnects()
        return self.summary


def decision_record(inspector: Inspector, frame: Frame) -> dict[str, Any]:
    """Inspect one frame → its record (an ``error`` record if the frame is unreadable or invalid)."""
    return Runner(inspector).inspect(frame)[0]


def run(inspector: Inspector, frames: Iterable[Frame], sinks: list[Sink]) -> Summary:
    return Runner(inspector, sinks).run(frames)
