"""The live view's state, fed by the runner: the latest frame, recent records (trend), the last NG
frames (gallery), counters, and whether the source is live, disconnected or finished.

``LiveView(runner, info, host, port, source=None, capture=None, *, token=None, allowed_hosts=()).start()``
serves it on a daemon thread (routes in ``server.ROUTES``); ``update(record, image, map)`` is the runner
observer; ``finish()`` marks a finite source as done (the server keeps serving until ``close()``).
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
from typing import Any

import cv2
import numpy as np

from ...errors import InputError
from ..evidence import draw, frame_map
from .guard import Guard, check_bind
from .page import LOGIN_PAGE
from .server import BoundedServer, make_handler
from .upload import MAX_PIXELS

JPEG_QUALITY = 80
THUMB_WIDTH = 240
STALE_S = 10.0  # a live source without a frame for this long is shown as stale


def drift_metrics(status: dict[str, Any]) -> list[str]:
    """Prometheus lines of a ``DriftWatch.status()`` (figures appear once the window has enough frames)."""
    lines = ["# HELP anomedge_drift_alarm 1 while a drift check is out of its calibration band.",
             "# TYPE anomedge_drift_alarm gauge"]
    checks = ("score", "ng_rate", "brightness", "contrast", "focus")
    lines += [f'anomedge_drift_alarm{{check="{c}"}} {int(c in status["in_alarm"])}' for c in checks]
    lines += ["# HELP anomedge_drift_alarms_total Drift alarms raised.", "# TYPE anomedge_drift_alarms_total counter",
              f"anomedge_drift_alarms_total {status['alarms']}"]
    gauges = [("score_ks", "KS statistic, window scores vs calibration.", status.get("score", {}).get("ks")),
              ("score_ks_critical", "KS critical value (alarm above).", status.get("score", {}).get("ks_critical")),
              ("score_psi", "Population stability index, window vs calibration.", status.get("score", {}).get("psi"))]
    rate = status.get("ng_rate", {})
    gauges += [(f"ng_rate_{k}", f"NG rate over the window: {k}.", rate.get(k)) for k in ("rate", "low", "high", "expected")]
    for name, text, value in gauges:
        if value is not None:
            lines += [f"# HELP anomedge_drift_{name} {text}", f"# TYPE anomedge_drift_{name} gauge",
                      f"anomedge_drift_{name} {value}"]
    inputs = status.get("inputs", {})
    if inputs:
        lines += ["# HELP anomedge_drift_input Input statistic: window median and calibration band.",
                  "# TYPE anomedge_drift_input gauge"]
        for stat, v in inputs.items():
            lines += [f'anomedge_drift_input{{stat="{stat}",value="median"}} {v["median"]}',
                      f'anomedge_drift_input{{stat="{stat}",value="band_low"}} {v["band"][0]}',
                      f'anomedge_drift_input{{stat="{stat}",value="band_high"}} {v["band"][1]}']
    return lines


def label_frame(picture: np.ndarray, record: dict[str, Any]) -> np.ndarray:
    """Write ``LABEL score`` on a filled box in the top-left corner, sized to the frame (in place)."""
    label = str(record.get("label"))
    score = record.get("score")
    text = f"{label} {score:.3f}" if isinstance(score, float) else label
    scale = max(0.5, picture.shape[1] / 500)
    thickness = max(1, round(scale * 2))
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    colour = {"NG": (40, 40, 220), "OK": (40, 150, 40)}.get(label, (110, 110, 110))
    cv2.rectangle(picture, (0, 0), (w + 12, h + base + 12), colour, cv2.FILLED)
    cv2.putText(picture, text, (6, h + 6), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return picture


class LiveView:
    def __init__(self, runner, info: dict[str, Any], host: str = "127.0.0.1", port: int = 8080, source: Any = None,
                 capture: Any = None, max_upload_bytes: int = 20 << 20, history: int = 200, *,
                 token: str | None = None, allowed_hosts: tuple[str, ...] = (), max_connections: int = 32,
                 request_timeout_s: float = 30.0, read_timeout_s: float = 10.0, max_pixels: int = MAX_PIXELS,
                 max_parts: int = 16, gallery: int = 8, max_streams: int = 8):
        check_bind(host, token)
        self.runner = runner
        self.info = info
        self.source = source
        self.capture = capture
        self.max_upload_bytes = max_upload_bytes
        self.max_pixels, self.max_parts = max_pixels, max_parts
        self.request_timeout_s, self.read_timeout_s = request_timeout_s, read_timeout_s
        self.streams = threading.BoundedSemaphore(max_streams)  # MJPEG viewers hold a connection each
        self.last: collections.deque = collections.deque(maxlen=history)
        self.gallery: collections.deque = collections.deque(maxlen=gallery)  # [id, brief, image, map, jpeg|None]
        self._ids = itertools.count(1)
        self.api_requests = 0
        self.finished_at: float | None = None
        self.last_frame_at: float | None = None
        self._latest: tuple[dict[str, Any], np.ndarray, np.ndarray | None] | None = None
        self._jpeg: tuple[int, bytes] | None = None
        self._version = 0
        self._state = threading.Condition()
        self.closing = threading.Event()
        try:
            self.server = BoundedServer((host, port), make_handler(self), max_connections)
        except OverflowError as exc:
            raise InputError(f"--serve {host}:{port}: the port must be 1-65535") from exc
        except OSError as exc:
            raise InputError(f"--serve {host}:{port}: cannot listen ({exc.strerror}); choose another HOST:PORT") from exc
        self.host, self.port = self.server.server_address[:2]
        self.guard = Guard(host, self.port, token, tuple(allowed_hosts))
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="anomedge-serve", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in str(self.host) else self.host
        return f"http://{host}:{self.port}/"

    def start(self) -> "LiveView":
        self._thread.start()
        return self

    def close(self) -> None:
        self.closing.set()
        with self._state:
            self._state.notify_all()
        self.server.shutdown()
        self.server.server_close()

    def finish(self) -> None:
        """The source has ended: the page says so; the API keeps answering."""
        self.finished_at = time.time()

    # fed by the runner ---------------------------------------------------------------------------------
    def update(self, record: dict[str, Any], image: np.ndarray | None, small_map: np.ndarray | None) -> None:
        brief = {k: record.get(k) for k in ("source", "index", "label", "score", "timestamp")}
        with self._state:
            self.last.append(brief)
            self.last_frame_at = time.time()
            if image is not None:
                self._latest = (record, image, small_map)
                self._version += 1
                if record.get("label") == "NG":
                    self.gallery.append([next(self._ids), {**brief, "boxes": record.get("boxes") or []},
                                         image, small_map, None])
                self._state.notify_all()

    # views --------------------------------------------------------------------------------------------
    def counters(self) -> dict[str, Any]:
        counters = self.runner.summary.as_dict()
        if self.capture is not None:
            counters["dropped"] = self.capture.dropped
        if self.source is not None and hasattr(self.source, "reconnects"):
            counters["reconnects"] = self.source.reconnects
        counters["api_requests"] = self.api_requests
        inspected = counters["frames"]
        counters["yield_pct"] = round(100 * counters["ok"] / inspected, 2) if inspected else None
        counters["ng_pct"] = round(100 * counters["ng"] / inspected, 2) if inspected else None
        return counters

    def connected(self) -> bool:
        return bool(getattr(self.source, "connected", True)) if getattr(self.source, "live", False) and \
            hasattr(self.source, "connected") else True

    def state(self) -> str:
        """'finished' (a finite source ended), 'disconnected', 'stale' (live, no frame for STALE_S), 'running'
        or 'idle' (API only / no frame yet)."""
        if self.finished_at is not None:
            return "finished"
        if not self.connected():
            return "disconnected"
        if self.last_frame_at is None:
            return "idle"
        live = getattr(self.source, "live", False)
        return "stale" if live and time.time() - self.last_frame_at > STALE_S else "running"

    def status(self) -> dict[str, Any]:
        with self._state:
            last = list(self.last)
            gallery = [{"id": entry[0], **entry[1]} for entry in self.gallery]
        age = None if self.last_frame_at is None else round(time.time() - self.last_frame_at, 3)
        return {**self.info, "threshold": self.runner.threshold, "pixel_threshold": self.runner.pixel_threshold,
                "threshold_since": self.runner.decision.since, "threshold_origin": self.runner.decision.origin,
                "connected": self.connected(), "state": self.state(), "last_frame_age_s": age,
                "finished_at": self.finished_at, "counters": self.counters(), "last": last, "ng_gallery": gallery,
                "drift": None if self.runner.drift is None else self.runner.drift.status()}

    def metrics(self) -> str:
        c = self.counters()
        last = self.last[-1] if self.last else {}
        rows = [("frames_total", "counter", "Frames inspected.", c["frames"]),
                ("ng_total", "counter", "Frames decided NG.", c["ng"]),
                ("errors_total", "counter", "Frames that could not be inspected.", c["errors"]),
                ("dropped_frames_total", "counter", "Frames dropped by the capture queue (policy latest).", c["dropped"]),
                ("reconnects_total", "counter", "Reconnects of the live source.", c["reconnects"]),
                ("api_requests_total", "counter", "POST /api/inspect requests.", c["api_requests"]),
                ("threshold", "gauge", "Image score threshold in use.", self.runner.threshold),
                ("last_score", "gauge", "Score of the last inspected frame.", last.get("score")),
                ("source_connected", "gauge", "1 while the source is connected.", int(self.connected())),
                ("source_finished", "gauge", "1 once a finite source has ended.", int(self.finished_at is not None)),
                ("uptime_seconds", "gauge", "Seconds since the run started.", c["uptime_s"])]
        lines = []
        for name, kind, text, value in rows:
            if value is None:
                continue
            lines += [f"# HELP anomedge_{name} {text}", f"# TYPE anomedge_{name} {kind}", f"anomedge_{name} {value}"]
        lines += ["# HELP anomedge_latency_ms Inspection latency over the recent frames.", "# TYPE anomedge_latency_ms summary"]
        for q, key in (("0.5", "p50_ms"), ("0.99", "p99_ms")):
            if c[key] is not None:
                lines.append(f'anomedge_latency_ms{{quantile="{q}"}} {c[key]}')
        lines.append(f"anomedge_latency_ms_count {len(self.runner.summary.latencies_ms)}")
        if self.runner.drift is not None:
            lines += drift_metrics(self.runner.drift.status())
        return "\n".join(lines) + "\n"

    def render(self, record: dict[str, Any], image: np.ndarray, small_map: np.ndarray | None) -> np.ndarray:
        """The frame with heatmap overlay, boxes and a readable label (BGR uint8)."""
        if small_map is not None:
            picture = draw(image, frame_map(small_map, image.shape[:2]), record.get("boxes") or [], *self.runner.heat_range,
                           self.runner.ignored)
        else:
            from ..overlay import overlay
            picture = overlay(image, np.zeros(image.shape[:2], np.float32), 0, 1, alpha=0)
        return label_frame(picture, record)

    def jpeg(self) -> bytes | None:
        """The latest frame with overlay, boxes and label as JPEG (cached per frame)."""
        with self._state:
            latest, version = self._latest, self._version
            if self._jpeg is not None and self._jpeg[0] == version:
                return self._jpeg[1]
        if latest is None:
            return None
        data = cv2.imencode(".jpg", self.render(*latest), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])[1].tobytes()
        with self._state:
            self._jpeg = (version, data)
        return data

    def ng_jpeg(self, key: int) -> bytes | None:
        """Thumbnail (THUMB_WIDTH wide) of gallery entry ``key``, or None once it has left the gallery."""
        with self._state:
            entry = next((e for e in self.gallery if e[0] == key), None)
            if entry is None or entry[4] is not None:
                return None if entry is None else entry[4]
            _, brief, image, small_map, _ = entry
        picture = self.render(brief, image, small_map)
        height = max(1, round(picture.shape[0] * THUMB_WIDTH / picture.shape[1]))
        thumb = cv2.resize(picture, (THUMB_WIDTH, height), interpolation=cv2.INTER_AREA)
        data = cv2.imencode(".jpg", thumb, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])[1].tobytes()
        with self._state:
            entry[4] = data
            entry[2] = entry[3] = None  # the thumbnail replaces the frame: memory stays small
        return data

    def wait_frame(self, seen: int, timeout_s: float) -> int:
        with self._state:
            self._state.wait_for(lambda: self._version != seen or self.closing.is_set(), timeout_s)
            return self._version

    def next_api_index(self) -> int:
        with self._state:
            self.api_requests += 1
            return self.api_requests

    def overlay_png(self, record: dict[str, Any], image: np.ndarray, small_map: np.ndarray) -> bytes:
        picture = draw(image, frame_map(small_map, image.shape[:2]), record.get("boxes") or [], *self.runner.heat_range,
                           self.runner.ignored)
        return cv2.imencode(".png", picture)[1].tobytes()

    def login_page(self) -> bytes:
        return LOGIN_PAGE.encode()
