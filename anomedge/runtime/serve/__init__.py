"""Live view and REST API on the standard library's HTTP server (nothing to install).

``LiveView(runner, info, host, port, source=None, capture=None, token=None, allowed_hosts=()).start()``:

- ``GET /``             the live page (``page.py``); without a valid token/cookie: a login page (401).
- ``GET /frame.jpg``    the last inspected frame with overlay, boxes and label (JPEG); 204 before the first.
- ``GET /ng.jpg?id=N``  a thumbnail of one of the last NG frames (ids in ``/api/status`` ``ng_gallery``).
- ``GET /stream.mjpg``  the frames as MJPEG (multipart/x-mixed-replace); HEAD answers headers only.
- ``GET /api/status``   JSON: artifact, backend, threshold, state, counters (+ yield / NG %), last records.
- ``GET /metrics``      Prometheus text format.
- ``GET /healthz``      200 ``{"status": "ok"}``; 503 while a live source is disconnected (no token needed).
- ``POST /api/inspect`` an image (raw body or multipart/form-data) → the decision record (also to the sinks).
- ``POST /api/login``   ``Authorization: Bearer TOKEN`` → the session cookie for the page; ``/api/logout``.

Security (``guard.py``): a token is required beyond loopback; Host allow-list; same-origin POSTs only.
Robustness (``server.py``): bounded connections, request deadlines, an HTTP answer for every failure;
uploads (``upload.py``, ``multipart.py``): size cap, linear multipart parser with a part cap, pixel
budget from the header before decoding.
"""

from .guard import check_bind, is_loopback
from .upload import MAX_PIXELS, check_pixel_budget, decode_upload, header_size, sniff
from .view import LiveView

__all__ = ["LiveView", "MAX_PIXELS", "check_bind", "check_pixel_budget", "decode_upload", "header_size",
           "is_loopback", "parse_address", "sniff"]


def parse_address(value: str) -> tuple[str, int]:
    """``'127.0.0.1:8080'`` / ``'[::1]:8080'`` → (host, port); InputError naming the fix otherwise."""
    from ...errors import InputError

    host, _, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise InputError(f"--serve '{value}': expected HOST:PORT with a port 1-65535, e.g. 127.0.0.1:8080")
    return host, int(port)
