"""What each route does: ``action(handler, view, url)``; failures raise ``HttpError`` (see ``server.ROUTES``)."""

from __future__ import annotations

import json
import select
import socket
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult, parse_qs

from ...errors import AnomedgeError, InputError
from ..sources import Frame
from . import multipart
from .page import PAGE
from .server import HttpError
from .upload import NotAnImage, OverBudget, decode_upload

if TYPE_CHECKING:
    from .view import LiveView

RAW_TYPES = ("image/", "application/octet-stream")
ERROR_CODES = ((NotAnImage, 415), (OverBudget, 413), (multipart.TooManyParts, 413), (InputError, 400))


def page(h: Any, view: "LiveView", url: SplitResult) -> None:
    h.send_body(200, PAGE.encode(), "text/html; charset=utf-8",
                {"Content-Security-Policy": "default-src 'self'; script-src 'unsafe-inline' 'self'; "
                                            "style-src 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'",
                 "X-Frame-Options": "DENY"})


def status(h: Any, view: "LiveView", url: SplitResult) -> None:
    h.send_json(200, view.status())


def metrics(h: Any, view: "LiveView", url: SplitResult) -> None:
    h.send_body(200, view.metrics().encode(), "text/plain; version=0.0.4; charset=utf-8")


def healthz(h: Any, view: "LiveView", url: SplitResult) -> None:
    ok = view.connected()
    h.send_json(200 if ok else 503, {"status": "ok" if ok else "disconnected"})


def frame(h: Any, view: "LiveView", url: SplitResult) -> None:
    data = view.jpeg()
    h.send_body(204 if data is None else 200, data or b"", "image/jpeg")


def ng_frame(h: Any, view: "LiveView", url: SplitResult) -> None:
    key = parse_qs(url.query).get("id", [""])[0]
    data = view.ng_jpeg(int(key)) if key.isdigit() and len(key) < 12 else None
    if data is None:
        raise HttpError(404, f"no NG frame with id {key!r} (the gallery keeps the last {view.gallery.maxlen})")
    h.send_body(200, data, "image/jpeg", {"Cache-Control": "private, max-age=3600"})


def client_gone(sock: socket.socket) -> bool:
    """True once the peer has closed (readable with EOF) — a viewer of a still picture never writes."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


def stream(h: Any, view: "LiveView", url: SplitResult) -> None:
    """MJPEG until the client goes or the server closes; at most ``view.streams`` viewers at once (503)."""
    if h.command != "HEAD" and not view.streams.acquire(blocking=False):
        raise HttpError(503, "too many stream viewers: use /frame.jpg or try again later", {"Retry-After": "5"})
    try:
        _stream(h, view)
    finally:
        if h.command != "HEAD":
            view.streams.release()


def _stream(h: Any, view: "LiveView") -> None:
    h.send_response(200)
    h.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
    h.send_header("Cache-Control", "no-store")
    if h.command == "HEAD":  # headers only: a HEAD never streams
        h.send_header("Content-Length", "0")
        h.end_headers()
        return
    h.send_header("Connection", "close")
    h.close_connection = True
    h.end_headers()
    seen = -1
    while not view.closing.is_set() and not client_gone(h.connection):
        version = view.wait_frame(seen, 1.0)
        data = view.jpeg() if version != seen else None
        seen = version
        if data:
            h.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(data) + data + b"\r\n")
            h.wfile.flush()
        time.sleep(0.05)  # at most 20 frames/s per viewer


def read_body(h: Any, view: "LiveView") -> bytes:
    """The request body under the size cap and the request deadline (411 / 400 / 413 / 408)."""
    if "chunked" in (h.headers.get("Transfer-Encoding") or "").lower():
        raise HttpError(411, "chunked uploads are not accepted: send Content-Length")
    length = h.headers.get("Content-Length")
    if length is None:
        raise HttpError(411, "Content-Length required")
    if not length.strip().isdigit() or len(length.strip()) > 15:
        raise HttpError(400, f"Content-Length {length!r}: expected a byte count")
    size = int(length)
    if size > view.max_upload_bytes:
        raise HttpError(413, f"upload of {size} bytes: the limit is {view.max_upload_bytes}")
    body = h.rfile.read(size)
    if len(body) < size:
        raise HttpError(400, f"body of {len(body)} bytes ended before its Content-Length {size}")
    return body


def inspect(h: Any, view: "LiveView", url: SplitResult) -> None:
    ctype = (h.headers.get("Content-Type") or "application/octet-stream").strip()
    is_multipart = ctype.lower().startswith("multipart/form-data")
    if not is_multipart and not ctype.lower().startswith(RAW_TYPES):
        raise HttpError(415, f"Content-Type {ctype!r}: send image/* or application/octet-stream bytes, "
                             "or multipart/form-data with a field named 'image'")
    body = read_body(h, view)
    try:
        data = multipart.image_part(body, ctype, view.max_parts) if is_multipart else body
        del body
        image = decode_upload(data, view.max_pixels)
    except InputError as exc:
        code = next(code for kind, code in ERROR_CODES if isinstance(exc, kind))
        raise HttpError(code, str(exc)) from exc
    frame_in = Frame(f"api:{h.client_address[0]}", view.next_api_index(), time.time(), image=image)
    try:
        record, inspected, small_map = view.runner.process_full(frame_in)
    except AnomedgeError as exc:  # a sink that cannot write: the record was not kept
        raise HttpError(503, str(exc)) from exc
    want_overlay = parse_qs(url.query).get("overlay", ["0"])[0] in ("1", "true", "png")
    if want_overlay and small_map is not None:
        h.send_body(200, view.overlay_png(record, inspected, small_map), "image/png",
                    {"X-Anomedge-Decision": json.dumps(record, separators=(",", ":"))})
    else:
        h.send_json(200 if record["label"] != "ERROR" else 422, record)


def login(h: Any, view: "LiveView", url: SplitResult) -> None:
    """Bearer token (or a JSON body {"token": ...}) → 204 with the session cookie; 401 / 429 otherwise."""
    guard, client = view.guard, h.client_address[0]
    if guard.token is None:
        h.send_body(204, b"", "text/plain")
        return
    if guard.throttled(client):
        raise HttpError(429, "too many failed logins: wait a minute", {"Retry-After": "60"})
    scheme, _, token = (h.headers.get("Authorization") or "").partition(" ")
    if scheme.lower() != "bearer":
        try:
            token = json.loads(read_body(h, view) or b"{}").get("token", "")
        except (ValueError, AttributeError) as exc:
            raise HttpError(400, 'login body: expected JSON {"token": "..."}') from exc
    if not isinstance(token, str) or not guard.token_matches(token.strip()):
        guard.failed(client)
        raise HttpError(401, "wrong token", {"WWW-Authenticate": 'Bearer realm="anomedge"'})
    h.send_body(204, b"", "text/plain", {"Set-Cookie": guard.cookie()})


def logout(h: Any, view: "LiveView", url: SplitResult) -> None:
    h.send_body(204, b"", "text/plain", {"Set-Cookie": "anomedge_session=; Max-Age=0; HttpOnly; SameSite=Strict; Path=/"})

