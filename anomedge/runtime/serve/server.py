"""The HTTP layer: a bounded ``ThreadingHTTPServer`` and a request handler driven by one route table.

- ``BoundedServer``: at most ``max_connections`` connections are served at once; one more is answered
  ``503`` (Retry-After) by a small bounded pool of refusers, beyond that closed.
- ``DeadlineReader`` wraps the request stream: the request line, headers and body must all arrive
  within ``request_timeout_s`` (and no read waits longer than ``read_timeout_s``), so a slow-loris
  client gets ``408`` and frees its slot and buffer.
- Every failure is an HTTP answer with a JSON ``{"error": ...}`` body: 400 malformed, 401 no token,
  403 Host / Origin refused, 404, 405 (+ Allow), 408, 411, 413, 415, 422 (an ERROR record), 429
  (failed logins), 500, 503. HEAD is GET without a body and never streams.
"""

from __future__ import annotations

import io
import json
import logging
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from .view import LiveView

log = logging.getLogger("anomedge.serve")
MAX_REQUEST_LINE = 8192
STATE_CHANGING = ("POST", "PUT", "DELETE", "PATCH")


class RequestTimeout(Exception):
    """The client did not send its request within the deadline."""


class DeadlineReader:
    """A buffered socket reader whose reads all end by ``deadline`` (``time.monotonic()``)."""

    def __init__(self, raw: io.BufferedReader, sock: socket.socket, read_timeout_s: float):
        self.raw, self.sock, self.read_timeout_s = raw, sock, read_timeout_s
        self.deadline = float("inf")
        self.count = 0  # bytes read since ``start``

    def start(self, seconds: float) -> None:
        self.deadline, self.count = time.monotonic() + seconds, 0

    def _arm(self) -> None:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise RequestTimeout
        self.sock.settimeout(min(self.read_timeout_s, remaining))

    def _once(self, call: Callable[[], bytes]) -> bytes:
        self._arm()
        try:
            return call()
        except TimeoutError as exc:
            raise RequestTimeout from exc

    def readline(self, limit: int = -1) -> bytes:
        out = bytearray()
        while limit < 0 or len(out) < limit:
            chunk = self._once(lambda: self.raw.peek(1))
            if not chunk:
                break
            room = len(chunk) if limit < 0 else min(len(chunk), limit - len(out))
            newline = chunk.find(b"\n", 0, room)
            out += self.raw.read(newline + 1 if newline >= 0 else room)
            if newline >= 0:
                break
        self.count += len(out)
        return bytes(out)

    def read(self, size: int = -1) -> bytes:
        out = bytearray()
        while size < 0 or len(out) < size:
            chunk = self._once(lambda: self.raw.read1(65536 if size < 0 else min(65536, size - len(out))))
            if not chunk:
                break
            out += chunk
        self.count += len(out)
        return bytes(out)

    def close(self) -> None:
        self.raw.close()


class BoundedServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with at most ``max_connections`` handler threads; beyond that 503."""

    daemon_threads = True
    REFUSERS = 4

    def __init__(self, address: tuple[str, int], handler: type, max_connections: int):
        self.slots = threading.BoundedSemaphore(max_connections)
        self.refusers = threading.BoundedSemaphore(self.REFUSERS)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if self.slots.acquire(blocking=False):
            try:
                super().process_request(request, client_address)
            except BaseException:
                self.slots.release()
                raise
        elif self.refusers.acquire(blocking=False):
            threading.Thread(target=self._refuse, args=(request,), daemon=True).start()
        else:
            self.shutdown_request(request)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def _refuse(self, request: socket.socket) -> None:
        """Read the request head (1 s at most) so the client sees the answer, then 503."""
        body = b'{"error": "too many connections: try again in a second"}'
        try:
            request.settimeout(1.0)
            seen = b""
            while b"\r\n\r\n" not in seen and len(seen) < 65536:
                chunk = request.recv(65536)
                if not chunk:
                    break
                seen += chunk
            request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
                            b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        except OSError:
            pass
        finally:
            self.shutdown_request(request)
            self.refusers.release()


@dataclass(frozen=True)
class Route:
    methods: tuple[str, ...]
    action: str             # name of the Handler method
    public: bool = False    # served without the token (health probes, login)


ROUTES = {
    "/": Route(("GET",), "page"),
    "/index.html": Route(("GET",), "page"),
    "/api/status": Route(("GET",), "status"),
    "/metrics": Route(("GET",), "metrics"),
    "/healthz": Route(("GET",), "healthz", public=True),
    "/frame.jpg": Route(("GET",), "frame"),
    "/ng.jpg": Route(("GET",), "ng_frame"),
    "/stream.mjpg": Route(("GET",), "stream"),
    "/api/inspect": Route(("POST",), "inspect"),
    "/api/login": Route(("POST",), "login", public=True),
    "/api/logout": Route(("POST",), "logout", public=True),
}


class HttpError(Exception):
    def __init__(self, code: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.code, self.headers = code, headers or {}


def make_handler(view: "LiveView") -> type[BaseHTTPRequestHandler]:
    from . import actions

    class Handler(BaseHTTPRequestHandler):
        """One request per ``handle_one_request``: read under the deadline, then ``dispatch``: Host → route →
        method → Origin (state-changing) → throttle → token → ``actions.<route.action>``."""

        server_version = "anomedge"
        protocol_version = "HTTP/1.1"
        default_request_version = "HTTP/1.0"  # an HTTP/0.9-looking line still gets a status line

        def log_message(self, *args: Any) -> None:
            pass

        def setup(self) -> None:
            super().setup()
            self.rfile = DeadlineReader(self.rfile, self.connection, view.read_timeout_s)  # type: ignore[assignment]

        def handle_one_request(self) -> None:
            self.command, self.requestline, self.request_version = None, "", "HTTP/1.0"  # type: ignore[assignment]
            self.rfile.start(view.request_timeout_s)  # type: ignore[attr-defined]
            try:
                self.raw_requestline = self.rfile.readline(MAX_REQUEST_LINE + 1)
                if len(self.raw_requestline) > MAX_REQUEST_LINE:
                    self.requestline, self.request_version = "", "HTTP/1.1"
                    self.send_error(414, f"request line longer than {MAX_REQUEST_LINE} bytes")
                    return
                if not self.raw_requestline:
                    self.close_connection = True
                    return
                if not self.parse_request():  # answers 400 / 431 / 505 itself
                    return
                self.dispatch()
                self.wfile.flush()
            except RequestTimeout:
                self.close_connection = True
                if self.rfile.count:  # type: ignore[attr-defined]  (an idle keep-alive just closes)
                    self._try(lambda: self.send_error(408, f"request not received within {view.request_timeout_s:g} s"))
            except OSError:
                self.close_connection = True

        def _try(self, call: Callable[[], None]) -> None:
            try:
                self.connection.settimeout(1.0)
                call()
                self.wfile.flush()
            except OSError:
                pass

        def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
            self.close_connection = True
            self.send_json(code, {"error": message or self.responses.get(code, ("error",))[0]}, {"Connection": "close"})

        def send_body(self, code: int, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def send_json(self, code: int, obj: Any, headers: dict[str, str] | None = None) -> None:
            self.send_body(code, json.dumps(obj).encode(), "application/json", headers)

        def dispatch(self) -> None:
            self.connection.settimeout(view.read_timeout_s)  # writes to a client that stops reading end too
            url = urlsplit(self.path)
            method = "GET" if self.command == "HEAD" else self.command
            try:
                guard = view.guard
                if self.headers.get("Host") is None:
                    raise HttpError(400, "missing Host header")
                if not guard.host_allowed(self.headers):
                    raise HttpError(403, f"Host '{self.headers.get('Host')}' is not served here: "
                                         "start ad-run with --allow-host NAME to allow it")
                route = ROUTES.get(url.path)
                if route is None:
                    raise HttpError(404, f"no such page {url.path}")
                if method not in route.methods:
                    allow = ", ".join(route.methods + (("HEAD",) if "GET" in route.methods else ()))
                    raise HttpError(405, f"{self.command} is not allowed on {url.path} (allowed: {allow})", {"Allow": allow})
                if method in STATE_CHANGING and not guard.same_origin(self.headers):
                    raise HttpError(403, f"cross-site {method} refused (Origin {self.headers.get('Origin')!r})")
                client = self.client_address[0]
                if not route.public and guard.token is not None and guard.throttled(client):  # before any comparison
                    raise HttpError(429, "too many failed logins: wait a minute", {"Retry-After": "60"})
                if not route.public and not guard.authorized(self.headers):
                    if self.headers.get("Authorization") or self.headers.get("Cookie"):
                        guard.failed(client)
                    if route.action == "page":
                        self.send_body(401, view.login_page(), "text/html; charset=utf-8")
                        return
                    raise HttpError(401, "missing or wrong token: send 'Authorization: Bearer TOKEN'",
                                    {"WWW-Authenticate": 'Bearer realm="anomedge"'})
                if method not in STATE_CHANGING and (self.headers.get("Transfer-Encoding")
                                                     or (self.headers.get("Content-Length") or "0").strip() != "0"):
                    self.close_connection = True  # a body nobody reads must not be parsed as the next request
                getattr(actions, route.action)(self, view, url)
            except HttpError as exc:
                if exc.code >= 400 and method in STATE_CHANGING:
                    self.close_connection = True  # an unread body must not be taken for the next request
                self.send_json(exc.code, {"error": str(exc)}, exc.headers)
            except (RequestTimeout, OSError):
                raise  # the connection, not the request, failed: handle_one_request closes it
            except Exception as exc:  # a bug must still answer, and be logged
                log.exception("live view: %s %s failed", self.command, url.path)
                self.close_connection = True
                self.send_json(500, {"error": f"internal error: {type(exc).__name__}: {exc}"})

    return Handler
