"""Who may talk to the live view: bearer token, Host allow-list (DNS rebinding) and same-origin checks on
state-changing requests (CSRF).

``Guard(host, port, token=None, allowed_hosts=())``:
- ``authorized(headers)``: True without a token; else ``Authorization: Bearer TOKEN`` or the session cookie
  set by ``POST /api/login`` (HttpOnly, SameSite=Strict; its value is an HMAC of the token, not the token);
  constant-time comparisons.
- ``host_allowed(headers)``: the Host header names the bound host, localhost, 127.0.0.1, [::1] or an
  ``allowed_hosts`` entry (any port); a missing Host is refused.
- ``same_origin(headers)``: a state-changing request whose ``Origin`` (or ``Sec-Fetch-Site``) says another
  site — or ``null`` — is refused; a request without either header comes from a non-browser client.
- ``throttled(client)``: more than ``MAX_FAILURES`` failed logins from one address per minute → True (429).
``check_bind(host, token)`` refuses a bind beyond loopback without a token (InputError, exit 2).
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import ipaddress
import threading
import time
from typing import Mapping
from urllib.parse import urlsplit

from ...errors import InputError

COOKIE = "anomedge_session"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
MIN_TOKEN = 16
MAX_FAILURES = 10
TOKEN_HINT = "python -c 'import secrets; print(secrets.token_urlsafe(24))'"


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve beyond loopback without a token, and tokens too short to resist guessing."""
    if token is not None and len(token) < MIN_TOKEN:
        raise InputError(f"--token of {len(token)} characters: use at least {MIN_TOKEN}, e.g. from {TOKEN_HINT}")
    if token is None and not is_loopback(host):
        raise InputError(f"--serve {host}: binding beyond loopback needs --token or ANOMEDGE_TOKEN "
                         f"(e.g. from {TOKEN_HINT}), or bind 127.0.0.1")


def hostname(value: str) -> str:
    """``'Example.com:8080'`` → ``'example.com'``, ``'[::1]:80'`` → ``'::1'``; '' for a malformed value."""
    try:
        return (urlsplit("//" + value.strip()).hostname or "").lower()
    except ValueError:
        return ""


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    return None if value is None else str(value)


class Guard:
    def __init__(self, host: str, port: int, token: str | None = None, allowed_hosts: tuple[str, ...] = ()):
        self.port = port
        self.token = token
        self.session = hmac.new(token.encode(), b"anomedge-session", hashlib.sha256).hexdigest() if token else None
        self.hosts = {h.strip().strip("[]").lower() for h in (host, *LOOPBACK_NAMES, *allowed_hosts)} - {""}
        self._failures: collections.OrderedDict[str, collections.deque] = collections.OrderedDict()
        self._lock = threading.Lock()

    # --- authentication --------------------------------------------------------------------------------
    def token_matches(self, candidate: str) -> bool:
        return self.token is not None and hmac.compare_digest(candidate.encode(), self.token.encode())

    def authorized(self, headers: Mapping[str, str]) -> bool:
        if self.token is None:
            return True
        scheme, _, value = (_header(headers, "Authorization") or "").partition(" ")
        if scheme.lower() == "bearer" and self.token_matches(value.strip()):
            return True
        for cookie in (_header(headers, "Cookie") or "").split(";"):
            name, _, value = cookie.strip().partition("=")
            if name == COOKIE and hmac.compare_digest(value.encode(), self.session.encode()):  # type: ignore[union-attr]
                return True
        return False

    def cookie(self) -> str:
        return f"{COOKIE}={self.session}; HttpOnly; SameSite=Strict; Path=/"

    def throttled(self, client: str) -> bool:
        with self._lock:
            recent = self._failures.get(client)
            now = time.monotonic()
            while recent and now - recent[0] > 60:
                recent.popleft()
            return bool(recent) and len(recent) >= MAX_FAILURES  # type: ignore[arg-type]

    def failed(self, client: str) -> None:
        with self._lock:
            self._failures.setdefault(client, collections.deque(maxlen=MAX_FAILURES)).append(time.monotonic())
            self._failures.move_to_end(client)
            while len(self._failures) > 1024:  # bounded memory whatever the number of clients
                self._failures.popitem(last=False)

    # --- where the request comes from ------------------------------------------------------------------
    def host_allowed(self, headers: Mapping[str, str]) -> bool:
        value = _header(headers, "Host")
        return value is not None and hostname(value) in self.hosts

    def same_origin(self, headers: Mapping[str, str]) -> bool:
        if (_header(headers, "Sec-Fetch-Site") or "same-origin").lower() not in ("same-origin", "none"):
            return False
        origin = _header(headers, "Origin")
        if origin is None:
            return True
        try:
            parts = urlsplit(origin.strip())
            port = parts.port or (80 if parts.scheme == "http" else 443)
        except ValueError:
            return False
        return parts.scheme == "http" and (parts.hostname or "").lower() in self.hosts and port == self.port
