"""The run loop: frames from a source → inspector → one decision record per frame → sinks.

A frame that fails to decode becomes an error record and the loop goes on; ``Summary`` counts
frames, NG, errors and latency percentiles.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

from ..errors import InputError
from .pipeline import Inspector
from .sources import Frame


@dataclass
class Summary:
    frames: int = 0
    ng: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def line(self) -> str:
        return (f"{self.frames} frames: {self.frames - self.ng - self.errors} OK, {self.ng} NG, {self.errors} errors; "
                f"latency p50 {self.percentile(50):.1f} ms, p99 {self.percentile(99):.1f} ms")


def decision_record(inspector: Inspector, frame: Frame) -> dict[str, Any]:
    """Inspect one frame → its record (an ``error`` record if the frame is unreadable or invalid)."""
    record: dict[str, Any] = {"source": frame.source, "index": frame.index, "timestamp": round(frame.timestamp, 6)}
    if frame.error is None:
        try:
            start = time.perf_counter()
            result = inspector.inspect([frame.image])
            total = (time.perf_counter() - start) * 1e3
            score = float(result.scores[0])
            record.update(score=score, label=inspector.decide(score), threshold=inspector.threshold,
                          ms={**{k: round(v, 3) for k, v in result.timings_ms.items()}, "total": round(total, 3)})
            return record
        except InputError as exc:
            frame.error = str(exc)
    record.update(label="ERROR", error=frame.error)
    return record


def run(inspector: Inspector, frames: Iterable[Frame], sinks: list[Callable[[dict[str, Any]], None]]) -> Summary:
    summary = Summary()
    for frame in frames:
        record = decision_record(inspector, frame)
        for sink in sinks:
            sink(record)
        summary.frames += 1
        summary.ng += record["label"] == "NG"
        summary.errors += record["label"] == "ERROR"
        if "ms" in record:
            summary.latencies_ms.append(record["ms"]["total"])
    return summary
