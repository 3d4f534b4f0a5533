"""Helpers for the live-view tests: a real LiveView on 127.0.0.1 over a real runner, raw-socket HTTP."""

from __future__ import annotations

import contextlib
import json
import socket
import time

from anomedge.runtime.pipeline import Inspector
from anomedge.runtime.runner import Runner
from anomedge.runtime.serve import LiveView
from anomedge.runtime.sinks import JsonlSink


@contextlib.contextmanager
def serving(artifact, tmp_path, **options):
    """(view, runner, jsonl path) of a started LiveView on 127.0.0.1 (ephemeral port)."""
    jsonl = tmp_path / "records.jsonl"
    sink = JsonlSink(jsonl)
    with Inspector(artifact, "onnxruntime") as inspector:
        runner = Runner(inspector, [sink.write])
        view = LiveView(runner, {"artifact": "tiny", "backend": "onnxruntime"}, "127.0.0.1", 0, **options).start()
        runner.observers.append(view.update)
        try:
            yield view, runner, jsonl
        finally:
            view.close()
            sink.close()


def raw(port: int, data: bytes, timeout: float = 10.0, drip: float | None = None) -> bytes:
    """Send ``data`` (one byte every ``drip`` seconds if given), read the answer until the server closes
    or ``timeout`` passes; the raw response bytes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            if drip is None:
                s.sendall(data)
            else:
                for i in range(len(data)):
                    s.sendall(data[i:i + 1])
                    time.sleep(drip)
        except OSError:
            pass  # the server may answer and close before everything was sent
        out = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        return out


def status_of(response: bytes) -> int:
    """The status code of a raw HTTP response (0 if there was no answer)."""
    line = response.split(b"\r\n", 1)[0].split()
    return int(line[1]) if len(line) >= 2 and line[0].startswith(b"HTTP/1.") and line[1].isdigit() else 0


def body_of(response: bytes) -> dict:
    return json.loads(response.split(b"\r\n\r\n", 1)[1] or b"{}")


def request(port: int, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b"",
            timeout: float = 20.0) -> bytes:
    """One HTTP/1.1 request with ``Connection: close``; Host defaults to 127.0.0.1:PORT."""
    fields = {"Host": f"127.0.0.1:{port}", "Connection": "close", **(headers or {})}
    if body or method in ("POST", "PUT"):
        fields.setdefault("Content-Length", str(len(body)))
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items() if v is not None)
    return raw(port, head.encode("latin-1") + b"\r\n" + body, timeout)
