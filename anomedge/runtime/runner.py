"""The run loop: frames from a source → inspector → one decision record per frame → sinks.

Fails closed: a frame that cannot be read or decoded, is over the pixel budget, has an unusable
shape/dtype, does not contain the ROI, or whose inspection fails or gives a non-finite score becomes
an ``ERROR`` record with its ``error`` reason (``NG`` with the reason under ``on_error="ng"``) and
the loop goes on. OK needs a finite score under a finite threshold (``runtime.decision``).

A record holds: source, index, timestamp (capture time, epoch seconds), score (None when not
finite), ``score_normalized`` (with a calibrated normaliser: threshold → 0.5, clipped to [0, 1]),
label OK/NG/ERROR, threshold (in force for this frame), ``ms`` per stage (+ ``total``; NG:
``evidence_ms``), ``dropped`` (frames dropped by the capture queue so far), ``error`` (why, for
ERROR) and, for NG, ``boxes`` ([x, y, w, h] in frame pixels, of the map thresholded at the pixel
threshold) and ``overlay`` (the saved PNG) when evidence is saved; ``drift`` (the checks in alarm and
their figures, ``runtime.drift``) only while the drift watch is in alarm, and ``drift_event`` ("alarm" /
"clear") on the frame where an alarm starts / ends.

``Runner(inspector, sinks, ...)`` owns the loop, the ``Summary`` (shared with the live view) and a lock
so that the live view's ``POST /api/inspect`` can use the same inspector and sinks. Between frames it
checks (one ``stat``) whether ``metadata.json`` was re-calibrated and switches to the new thresholds,
logging ``threshold old → new``; ``decision.threshold`` / ``decision.since`` say what is in force.
A sink that cannot write raises ``SinkError`` (the run ends; the CLI prints the summary, exit 1).
``run(inspector, frames, sinks)`` and ``decision_record(inspector, frame)`` are the short forms.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable

import numpy as np

from ..artifact import METADATA
from ..errors import AnomedgeError, InputError
from .decision import ON_ERROR, Decision, ThresholdWatch, thresholds_for
from .drift import DriftWatch
from .evidence import EvidenceWriter, frame_map, regions
from .pipeline import Inspector
from .sinks import SinkError
from .sources import Frame, crop_roi

log = logging.getLogger("anomedge.runner")
Sink = Callable[[dict[str, Any]], None]
Observer = Callable[[dict[str, Any], "np.ndarray | None", "np.ndarray | None"], None]
LATENCY_WINDOW = 100_000  # percentiles over the last frames: memory stays flat on month-long runs


@dataclass
class Summary:
    """Counters of a run; ``latencies_ms`` keeps the last ``LATENCY_WINDOW`` inspection latencies.
    ``errors`` counts ERROR records, ``ng_on_error`` the NG records that are failures (``--on-error ng``)."""

    frames: int = 0
    ng: int = 0
    errors: int = 0
    ng_on_error: int = 0
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
        self.ng_on_error += record["label"] == "NG" and "error" in record
        if "ms" in record:
            self.latencies_ms.append(record["ms"]["total"])

    def as_dict(self) -> dict[str, Any]:
        return {"frames": self.frames, "ok": self.frames - self.ng - self.errors, "ng": self.ng, "errors": self.errors,
                "ng_on_error": self.ng_on_error, "dropped": self.dropped, "reconnects": self.reconnects,
                "p50_ms": _finite(self.percentile(50)), "p99_ms": _finite(self.percentile(99)),
                "uptime_s": round(time.time() - self.started, 3)}

    def line(self) -> str:
        failed = f" ({self.ng_on_error} of them on error)" if self.ng_on_error else ""
        return (f"{self.frames} frames: {self.frames - self.ng - self.errors} OK, {self.ng} NG{failed}, "
                f"{self.errors} errors; latency p50 {self.percentile(50):.1f} ms, p99 {self.percentile(99):.1f} ms; "
                f"{self.dropped} dropped, {self.reconnects} reconnects")


@dataclass
class Computed:
    """``Runner.compute``'s result: the inspected image (ROI applied), the ``Inspection`` and its wall
    time in ms, or the exception it raised (``exc``); all None for a frame that came with an error."""

    image: np.ndarray | None = None
    result: Any = None
    total_ms: float = 0.0
    exc: Exception | None = None


def _finite(value: float) -> float | None:
    return None if not np.isfinite(value) else round(value, 3)


class Runner:
    """Frames → records → sinks, with optional ROI crop, NG evidence and observers (live view).

    ``on_error``: "error" (failures are ERROR records) or "ng" (they are NG records with ``error``).
    ``watch_thresholds``: follow re-calibrations of the artifact's ``metadata.json``. ``drift``: watch the
    stream against ``thresholds.drift`` (``runtime.drift``; on by default when the artifact was calibrated
    with it): a record gets a ``drift`` field while an alarm is on; ``drift_options`` go to ``DriftWatch``."""

    def __init__(self, inspector: Inspector, sinks: Iterable[Sink] = (), *, roi: tuple[int, int, int, int] | None = None,
                 evidence: EvidenceWriter | None = None, observers: Iterable[Observer] = (), on_error: str = "error",
                 watch_thresholds: bool = True, drift: bool = True, drift_options: dict[str, Any] | None = None):
        self.inspector = inspector
        self.sinks = list(sinks)
        self.roi = roi
        self.evidence = evidence
        self.observers = list(observers)
        self.summary = Summary()
        self.lock = threading.Lock()
        if on_error not in ON_ERROR:
            raise InputError(f"--on-error '{on_error}': expected one of {', '.join(ON_ERROR)}")
        inspector.decision = replace(inspector.decision, on_error=on_error)
        self.watch = (ThresholdWatch(inspector.artifact.root / METADATA, self._override(), on_error,
                                     artifact=inspector.artifact, precision=inspector.backend.precision)
                      if watch_thresholds else None)
        self._watch_error: str | None = None
        thresholds = thresholds_for(inspector.artifact.metadata.thresholds, inspector.backend.precision)
        self.drift = DriftWatch.from_thresholds(thresholds, **(drift_options or {})) if drift else None

    def _override(self) -> float | None:
        decision = self.inspector.decision
        return decision.threshold if decision.origin == "--threshold" else None

    # what is in force (the live view reads these) --------------------------------------------------
    @property
    def decision(self) -> Decision:
        return self.inspector.decision

    @property
    def threshold(self) -> float | None:
        return self.decision.threshold

    @property
    def pixel_threshold(self) -> float | None:
        return self.decision.pixel_threshold

    @property
    def heat_range(self) -> tuple[float, float]:
        return self.decision.heat_range

    @property
    def ignored(self) -> np.ndarray | None:
        """(H,W) bool, the artifact's ignore mask at model resolution (overlays hatch it), or None."""
        mask = getattr(self.inspector, "ignore_mask", None)
        return None if mask is None else mask.pixels

    def refresh_decision(self) -> None:
        """At a frame boundary: switch to re-calibrated thresholds if metadata.json changed (one stat)."""
        if self.watch is None:
            return
        new = self.watch.poll(self.decision)
        if self.watch.error != self._watch_error:
            self._watch_error = self.watch.error
            if self.watch.error:
                log.warning("%s", self.watch.error)
        if new is not None:
            old = self.decision
            new = replace(new, since=time.time())
            self.inspector.decision = new
            log.warning("threshold %s → %s (metadata.json re-calibrated; pixel %s → %s)", old.threshold, new.threshold,
                        old.pixel_threshold, new.pixel_threshold)

    # one frame -------------------------------------------------------------------------------------
    def compute(self, frame: Frame) -> Computed:
        """The stateless part of a frame (ROI crop, preprocess, backbone, scoring, postprocess): no
        decision, sinks or counters, so the pipelined loop (``runtime.pipelined``) runs it on worker
        threads. A failure is kept in ``Computed.exc`` and raised where the record is made."""
        if frame.error is not None:
            return Computed()
        try:
            image = crop_roi(frame.image, self.roi)
            start = time.perf_counter()
            result = self.inspector.inspect([image])
            return Computed(image, result, (time.perf_counter() - start) * 1e3)
        except Exception as exc:  # noqa: BLE001  raised again, in order, by inspect()
            return Computed(exc=exc)

    def inspect(self, frame: Frame, dropped: int | None = None, computed: Computed | None = None
                ) -> tuple[dict[str, Any], np.ndarray | None, np.ndarray | None]:
        """One frame → (record, the inspected image (ROI applied) or None, its (h,w) anomaly map or None).
        ``computed``: ``compute(frame)`` done beforehand (pipelined loop); None: computed here."""
        decision = self.decision
        record: dict[str, Any] = {"source": frame.source, "index": frame.index, "timestamp": round(frame.timestamp, 6)}
        if dropped is not None:
            record["dropped"] = dropped
        error = frame.error
        if error is None:
            try:
                return self._inspect(frame, record, decision, computed)
            except InputError as exc:
                error = str(exc)
            except Exception as exc:  # noqa: BLE001  one frame must never end the run; the record says why
                error = f"inspection failed ({type(exc).__name__}: {str(exc).strip()[:300]})"
        record.update(label="ERROR" if decision.on_error == "error" else "NG", error=error)
        return record, None, None

    def _inspect(self, frame: Frame, record: dict[str, Any], decision: Decision, computed: Computed | None = None):
        if computed is None:
            image = crop_roi(frame.image, self.roi)
            start = time.perf_counter()
            result = self.inspector.inspect([image])
            total = (time.perf_counter() - start) * 1e3
        else:
            if computed.exc is not None:
                raise computed.exc
            image, result, total = computed.image, computed.result, computed.total_ms
        score = float(result.scores[0])
        small_map = result.maps[0]
        label, reason = decision.label(score)
        record["score"] = score if math.isfinite(score) else None
        normalized = decision.normalize(score)
        if normalized is not None:
            record["score_normalized"] = round(normalized, 6)
        record.update(label=label, threshold=decision.threshold,
                      ms={**{k: round(v, 3) for k, v in result.timings_ms.items()}, "total": round(total, 3)})
        if reason is not None:
            record["error"] = reason
            return record, image, small_map
        if label == "NG":
            self._evidence(record, image, small_map, decision)
        elif self.evidence is not None:
            self._save(record, image, None, decision)
        return record, image, small_map

    def _evidence(self, record: dict[str, Any], image: np.ndarray, small_map: np.ndarray, decision: Decision) -> None:
        start = time.perf_counter()
        full = frame_map(small_map, image.shape[:2])
        record["boxes"] = regions(full, decision.pixel_threshold) if decision.pixel_threshold is not None else []
        if self.evidence is not None:
            self._save(record, image, full, decision)
        record["evidence_ms"] = round((time.perf_counter() - start) * 1e3, 3)

    def _save(self, record: dict[str, Any], image: np.ndarray, full: np.ndarray | None, decision: Decision) -> None:
        try:
            path = self.evidence.save(image, full, record, *decision.heat_range, ignored=self.ignored)
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
                raise SinkError(f"cannot write the decision record ({exc.strerror or exc}); "
                                "check free space and permissions of the output files") from None

    def process(self, frame: Frame, dropped: int | None = None) -> dict[str, Any]:
        """Inspect, write to every sink, count, tell the observers; returns the record."""
        return self.process_full(frame, dropped)[0]

    def process_full(self, frame: Frame, dropped: int | None = None, computed: Computed | None = None):
        """As ``process``; returns (record, inspected image or None, (h,w) anomaly map or None).
        ``computed``: ``compute(frame)`` done beforehand (the pipelined loop)."""
        with self.lock:
            self.refresh_decision()
            record, image, small_map = self.inspect(frame, dropped, computed)
            if self.drift is not None:
                alarm = self.drift.update(record, image)
                if alarm is not None:
                    record["drift"] = alarm
                if self.drift.event is not None:  # the webhook / MQTT outputs send these records
                    record["drift_event"] = self.drift.event
            self.emit(record)
            self.summary.count(record)
        for observer in self.observers:
            observer(record, image, small_map)
        return record, image, small_map

    def run(self, frames: Iterable[Frame], *, stop_event: threading.Event | None = None, max_frames: int | None = None,
            on_done: Callable[[Frame, dict[str, Any]], None] | None = None, dropped: Callable[[], int] | None = None,
            reconnects: Callable[[], int] | None = None) -> Summary:
        """Process ``frames`` until they end, ``stop_event`` is set (after the frame in flight) or
        ``max_frames`` records were written. ``on_done(frame, record)`` runs after a frame's record is
        written (a hot folder marks the file done). ``SinkError`` ends the loop (the summary stays valid)."""
        for frame in frames:
            if dropped is not None:
                self.summary.dropped = dropped()
            if reconnects is not None:
                self.summary.reconnects = reconnects()
            record = self.process(frame, self.summary.dropped)
            if on_done is not None:
                try:
                    on_done(frame, record)
                except OSError as exc:
                    raise SinkError(f"cannot mark {frame.source} done ({exc.strerror or exc}); "
                                    "check free space and permissions of the --watch-state file") from None
            if (max_frames is not None and self.summary.frames >= max_frames) or (stop_event is not None and stop_event.is_set()):
                break
        if dropped is not None:
            self.summary.dropped = dropped()
        if reconnects is not None:
            self.summary.reconnects = reconnects()
        return self.summary


def decision_record(inspector: Inspector, frame: Frame) -> dict[str, Any]:
    """Inspect one frame → its record (an ``error`` record if the frame is unreadable or invalid)."""
    return Runner(inspector, watch_thresholds=False).inspect(frame)[0]


def run(inspector: Inspector, frames: Iterable[Frame], sinks: list[Sink]) -> Summary:
    return Runner(inspector, sinks).run(frames)
