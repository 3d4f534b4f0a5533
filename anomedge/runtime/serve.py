"""Live view and REST API on the standard library's ``ThreadingHTTPServer`` (nothing to install).

``LiveView(runner, info, host, port, source=None, capture=None).start()`` serves, on a daemon thread:

- ``GET /``             page: live frame with the heatmap overlay (periodic JPEG), OK/NG of the last
                        frames, counters, latency, threshold (polls ``/api/status``).
- ``GET /frame.jpg``    the last inspected frame with overlay and boxes (JPEG); 204 before the first.
- ``GET /stream.mjpg``  the same as MJPEG (multipart/x-mixed-replace) for VLC / an <img> tag.
- ``GET /api/status``   JSON: artifact, backend, threshold, counters, latency, last records.
- ``GET /metrics``      Prometheus text format.
- ``GET /healthz``      200 ``{"status": "ok"}``; 503 while a live source is disconnected.
- ``POST /api/inspect`` an image as the raw body or a multipart/form-data upload (≤ ``max_upload_bytes``,
                        PNG/JPEG/BMP/TIFF/WebP/PNM, checked by magic bytes and decoding) → the decision
                        record as JSON (the record also goes to the run's sinks); ``?overlay=1`` → the
                        overlay PNG with the record in the ``X-Anomedge-Decision`` header.

``LiveView.update(record, image, map)`` is the runner observer that feeds it.
"""

from __future__ import annotations

import collections
import email.parser
import email.policy
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import cv2
import numpy as np

from ..errors import InputError
from .evidence import draw, frame_map
from .sources import Frame

MAGIC = ((b"\x89PNG\r\n\x1a\n", "png"), (b"\xff\xd8\xff", "jpeg"), (b"BM", "bmp"), (b"II*\x00", "tiff"),
         (b"MM\x00*", "tiff"), (b"P5", "pnm"), (b"P6", "pnm"), (b"P2", "pnm"), (b"P3", "pnm"))
MAX_PIXELS = 50_000_000
JPEG_QUALITY = 80


def sniff(data: bytes) -> str | None:
    """The image format by magic bytes, or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return next((name for magic, name in MAGIC if data.startswith(magic)), None)


def decode_upload(data: bytes) -> np.ndarray:
    """Checked image bytes → (H,W[,C]) array as stored; InputError with the reason otherwise."""
    if not data:
        raise InputError("empty body: send an image (PNG, JPEG, BMP, TIFF, WebP or PNM)")
    if sniff(data) is None:
        raise InputError("not an image: expected PNG, JPEG, BMP, TIFF, WebP or PNM bytes")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise InputError("the image could not be decoded (corrupt or truncated)")
    if image.shape[0] * image.shape[1] > MAX_PIXELS:
        raise InputError(f"image of {image.shape[1]}x{image.shape[0]} pixels: the limit is {MAX_PIXELS}")
    return image


def multipart_image(content_type: str, body: bytes) -> bytes:
    """The first file part (or a part named image/file) of a multipart/form-data body."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body)
    if not message.is_multipart():
        raise InputError("malformed multipart/form-data body")
    for part in message.iter_parts():
        if part.get_filename() or part.get_param("name", header="content-disposition") in ("image", "file"):
            return part.get_payload(decode=True) or b""
    raise InputError("multipart upload without a file part: send the image as a form field named 'image'")


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>anomedge live</title>
<style>
body{font-family:system-ui,sans-serif;margin:1em;background:#111;color:#eee}
#frame{max-width:70vw;max-height:75vh;border:3px solid #444;image-rendering:pixelated;min-width:320px}
.OK{background:#2a7d2a}.NG{background:#c0392b}.ERROR{background:#888}
#last span{display:inline-block;width:14px;height:14px;margin:1px}
table td{padding:2px 10px}#label{font-size:2em;padding:0 .3em}
</style></head><body>
<h2>anomedge live view <span id="label"></span></h2>
<div style="display:flex;gap:2em"><div><img id="frame" alt="waiting for the first frame"></div>
<div><table>
<tr><td>frames</td><td id="frames">0</td></tr><tr><td>OK</td><td id="ok">0</td></tr>
<tr><td>NG</td><td id="ng">0</td></tr><tr><td>errors</td><td id="errors">0</td></tr>
<tr><td>dropped</td><td id="dropped">0</td></tr><tr><td>reconnects</td><td id="reconnects">0</td></tr>
<tr><td>latency p50 / p99</td><td id="latency">-</td></tr><tr><td>threshold</td><td id="threshold">-</td></tr>
<tr><td>last score</td><td id="score">-</td></tr><tr><td>source</td><td id="source">-</td></tr>
</table><p>last frames</p><div id="last"></div>
<p id="meta" style="color:#999"></p></div></div>
<script>
let shown = null;
function fmt(v, d){ return v === null || v === undefined ? "-" : Number(v).toFixed(d); }
async function tick(){
  try {
    const s = await (await fetch("/api/status", {cache: "no-store"})).json();
    for (const k of ["frames","ok","ng","errors","dropped","reconnects"]) document.getElementById(k).textContent = s.counters[k];
    document.getElementById("latency").textContent = fmt(s.counters.p50_ms,1) + " / " + fmt(s.counters.p99_ms,1) + " ms";
    document.getElementById("threshold").textContent = fmt(s.threshold,4);
    document.getElementById("meta").textContent = s.artifact + " on " + s.backend;
    const last = s.last.length ? s.last[s.last.length-1] : null;
    if (last){
      document.getElementById("score").textContent = fmt(last.score,4);
      document.getElementById("source").textContent = last.source + " #" + last.index;
      const lab = document.getElementById("label"); lab.textContent = last.label; lab.className = last.label;
      const key = last.source + "#" + last.index;
      if (key !== shown){ shown = key; document.getElementById("frame").src = "/frame.jpg?k=" + encodeURIComponent(key); }
    }
    document.getElementById("last").innerHTML = s.last.map(r => '<span class="'+r.label+'" title="'+r.index+'"></span>').join("");
  } catch (e) {}
  setTimeout(tick, 300);
}
tick();
</script></body></html>
"""


class LiveView:
    def __init__(self, runner, info: dict[str, Any], host: str = "127.0.0.1", port: int = 8080, source: Any = None,
                 capture: Any = None, max_upload_bytes: int = 20 << 20, history: int = 50):
        self.runner = runner
        self.info = info
        self.source = source
        self.capture = capture
        self.max_upload_bytes = max_upload_bytes
        self.last: collections.deque = collections.deque(maxlen=history)
        self.api_requests = 0
        self._latest: tuple[dict[str, Any], np.ndarray, np.ndarray | None] | None = None
        self._jpeg: tuple[int, bytes] | None = None
        self._version = 0
        self._state = threading.Condition()
        self.closing = threading.Event()
        try:
            self.server = ThreadingHTTPServer((host, port), _handler(self))
        except OSError as exc:
            raise InputError(f"--serve {host}:{port}: cannot listen ({exc.strerror}); choose another HOST:PORT") from exc
        self.server.daemon_threads = True
        self.host, self.port = self.server.server_address[:2]
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="anomedge-serve", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def start(self) -> "LiveView":
        self._thread.start()
        return self

    def close(self) -> None:
        self.closing.set()
        with self._state:
            self._state.notify_all()
        self.server.shutdown()
        self.server.server_close()

    # fed by the runner ---------------------------------------------------------------------------------
    def update(self, record: dict[str, Any], image: np.ndarray | None, small_map: np.ndarray | None) -> None:
        brief = {k: record.get(k) for k in ("source", "index", "label", "score", "timestamp")}
        with self._state:
            self.last.append(brief)
            if image is not None:
                self._latest = (record, image, small_map)
                self._version += 1
                self._state.notify_all()

    # views --------------------------------------------------------------------------------------------
    def counters(self) -> dict[str, Any]:
        counters = self.runner.summary.as_dict()
        if self.capture is not None:
            counters["dropped"] = self.capture.dropped
        if self.source is not None and hasattr(self.source, "reconnects"):
            counters["reconnects"] = self.source.reconnects
        counters["api_requests"] = self.api_requests
        return counters

    def connected(self) -> bool:
        return bool(getattr(self.source, "connected", True)) if getattr(self.source, "live", False) and \
            hasattr(self.source, "connected") else True

    def status(self) -> dict[str, Any]:
        with self._state:
            last = list(self.last)
        return {**self.info, "threshold": self.runner.threshold, "pixel_threshold": self.runner.pixel_threshold,
                "threshold_since": self.runner.decision.since, "threshold_origin": self.runner.decision.origin,
                "connected": self.connected(), "counters": self.counters(), "last": last}

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
        return "\n".join(lines) + "\n"

    def jpeg(self) -> bytes | None:
        """The latest frame with overlay, boxes and label as JPEG (cached per frame)."""
        with self._state:
            latest, version = self._latest, self._version
            if self._jpeg is not None and self._jpeg[0] == version:
                return self._jpeg[1]
        if latest is None:
            return None
        record, image, small_map = latest
        if small_map is not None:
            full = frame_map(small_map, image.shape[:2])
            boxes = record.get("boxes") or []
            picture = draw(image, full, boxes, *self.runner.heat_range)
        else:
            from .overlay import overlay
            picture = overlay(image, np.zeros(image.shape[:2], np.float32), 0, 1, alpha=0)
        colour = (0, 0, 255) if record.get("label") == "NG" else (0, 170, 0)
        cv2.putText(picture, f"{record.get('label')} {record.get('score', 0):.3f}", (4, 16),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1, cv2.LINE_AA)
        data = cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])[1].tobytes()
        with self._state:
            self._jpeg = (version, data)
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
        picture = draw(image, frame_map(small_map, image.shape[:2]), record.get("boxes") or [], *self.runner.heat_range)
        return cv2.imencode(".png", picture)[1].tobytes()


def _handler(view: LiveView):
    class Handler(BaseHTTPRequestHandler):
        server_version = "anomedge"
        timeout = 15  # a stalled client frees its thread

        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, code: int, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, code: int, obj: Any) -> None:
            self._send(code, json.dumps(obj).encode(), "application/json")

        def do_GET(self) -> None:
            path = urlparse(self.path).path
            if path in ("/", "/index.html"):
                self._send(200, PAGE.encode(), "text/html; charset=utf-8")
            elif path == "/api/status":
                self._json(200, view.status())
            elif path == "/metrics":
                self._send(200, view.metrics().encode(), "text/plain; version=0.0.4; charset=utf-8")
            elif path == "/healthz":
                ok = view.connected()
                self._json(200 if ok else 503, {"status": "ok" if ok else "disconnected"})
            elif path == "/frame.jpg":
                data = view.jpeg()
                if data is None:
                    self._send(204, b"", "image/jpeg")
                else:
                    self._send(200, data, "image/jpeg")
            elif path == "/stream.mjpg":
                self._stream()
            else:
                self._json(404, {"error": f"no such page {path}"})

        def _stream(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            seen = -1
            try:
                while not view.closing.is_set():
                    version = view.wait_frame(seen, 1.0)
                    data = view.jpeg() if version != seen else None
                    seen = version
                    if data:
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(data)
                                         + data + b"\r\n")
                    time.sleep(0.05)  # at most 20 frames/s per viewer
            except OSError:
                return

        def do_POST(self) -> None:
            url = urlparse(self.path)
            if url.path != "/api/inspect":
                self._json(404, {"error": f"no such endpoint {url.path}"})
                return
            length = self.headers.get("Content-Length")
            if length is None or not length.isdigit():
                self._json(411, {"error": "Content-Length required"})
                return
            if int(length) > view.max_upload_bytes:
                self.close_connection = True
                self._json(413, {"error": f"upload of {int(length)} bytes: the limit is {view.max_upload_bytes}"})
                return
            body = self.rfile.read(int(length))
            ctype = self.headers.get("Content-Type", "application/octet-stream")
            try:
                data = multipart_image(ctype, body) if ctype.startswith("multipart/form-data") else body
                image = decode_upload(data)
            except InputError as exc:
                self._json(415 if "not an image" in str(exc) else 400, {"error": str(exc)})
                return
            frame = Frame(f"api:{self.client_address[0]}", view.next_api_index(), time.time(), image=image)
            record, inspected, small_map = view.runner.process_full(frame)
            want_overlay = parse_qs(url.query).get("overlay", ["0"])[0] in ("1", "true", "png")
            if want_overlay and small_map is not None:
                self._send(200, view.overlay_png(record, inspected, small_map), "image/png",
                           {"X-Anomedge-Decision": json.dumps(record, separators=(",", ":"))})
            else:
                self._json(200 if record["label"] != "ERROR" else 422, record)

        do_HEAD = do_GET

    return Handler
