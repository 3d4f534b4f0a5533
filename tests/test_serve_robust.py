"""The API under hostile clients: a connection cap (503), slow-loris uploads and headers (408, the
slot is freed), an HTTP answer for every malformed request, HEAD that never streams, and a server
that keeps answering after the source finished."""

from __future__ import annotations

import socket
import time

import pytest
from serve_util import body_of, raw, request, serving, status_of


@pytest.mark.timeout(90)
def test_connection_cap_answers_503_and_recovers(tiny_artifact, tmp_path):
    with serving(tiny_artifact, tmp_path, max_connections=2, read_timeout_s=5, request_timeout_s=5) as (view, _, _):
        idle = [socket.create_connection(("127.0.0.1", view.port), timeout=5) for _ in range(2)]
        try:
            for s in idle:
                s.sendall(b"GET /api/status HTTP/1.1\r\n")  # holds a slot: headers never finish
            time.sleep(0.3)
            answer = request(view.port, "GET", "/api/status", timeout=5)
            assert status_of(answer) == 503 and b"Retry-After: 1" in answer
        finally:
            for s in idle:
                s.close()
        deadline = time.monotonic() + 10
        while status_of(request(view.port, "GET", "/healthz", timeout=5)) != 200:
            assert time.monotonic() < deadline, "the slots were not freed"
            time.sleep(0.1)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("head, tail", [
    (b"POST /api/inspect HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\nContent-Length: 5000\r\n\r\n",
     b"\x89PNG\r\n\x1a\n" + b"0" * 40),                        # a stalled upload
    (b"GET /api/status HTTP/1.1\r\n", b"X-Slow: " + b"a" * 40),  # headers dripped in
])
def test_slow_loris_gets_408_and_frees_the_slot(tiny_artifact, tmp_path, head, tail):
    with serving(tiny_artifact, tmp_path, max_connections=1, read_timeout_s=1.0, request_timeout_s=1.5) as (view, runner, _):
        start = time.monotonic()
        answer = raw(view.port, head + tail, timeout=10, drip=0.05)  # each byte within read_timeout, the whole too slow
        took = time.monotonic() - start
        assert status_of(answer) == 408 and "within 1.5 s" in body_of(answer)["error"]
        assert took < 5
        assert status_of(request(view.port, "GET", "/healthz", timeout=5)) == 200  # the only slot is free again
        assert runner.summary.frames == 0


@pytest.mark.timeout(90)
def test_silent_connection_is_closed_after_the_read_timeout(tiny_artifact, tmp_path):
    with serving(tiny_artifact, tmp_path, max_connections=1, read_timeout_s=0.5, request_timeout_s=5) as (view, _, _):
        start = time.monotonic()
        assert raw(view.port, b"", timeout=10) == b""  # nothing sent: closed without an answer (keep-alive idle)
        assert time.monotonic() - start < 3
        assert status_of(request(view.port, "GET", "/healthz")) == 200


MANY_PARTS = b"--zz\r\nContent-Disposition: form-data; name=\"p\"\r\n\r\nx\r\n" * 17 + b"--zz--\r\n"
MALFORMED = [
    (b"GARBAGE\r\n\r\n", 400),
    (b"\x00\x01\x02\xff\r\n\r\n", 400),
    (b"GET / HTTP/9.9\r\nHost: 127.0.0.1\r\n\r\n", 505),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(120)) + b"\r\n", 431),
    (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Long: " + b"a" * 70000 + b"\r\n\r\n", 431),
    (b"GET /api/status HTTP/1.1\r\n\r\n", 400),                                        # no Host
    (b"POST /api/inspect HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n\r\n", 411),
    (b"POST /api/inspect HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"5\r\nhello\r\n0\r\n\r\n", 411),
    (b"POST /api/inspect HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\nContent-Length: -5\r\n\r\n", 400),
    (b"POST /api/inspect HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\nContent-Length: 1e3\r\n\r\n", 400),
    (b"POST /api/inspect HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\nContent-Length: 99999999999\r\n\r\n", 413),
    (b"POST /api/inspect HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\nContent-Length: 50\r\n\r\nshort", 408),  # the rest never comes
    (b"POST /api/inspect HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data\r\nContent-Length: 4\r\n\r\nabcd", 400),
    (b"POST /api/inspect HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=zz\r\n"
     b"Content-Length: 19\r\n\r\n--zz\r\n\r\nno end here", 400),
    (b"POST /api/inspect HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=zz\r\n"
     b"Content-Length: %d\r\n\r\n" % len(MANY_PARTS) + MANY_PARTS, 413),             # over the part cap
    (b"PUT /api/inspect HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n", 405),
    (b"DELETE / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 405),
    (b"BREW /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 405),
    (b"GET /api/inspect HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 405),
    (b"GET /../../etc/passwd HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 404),
    (b"GET /ng.jpg?id=99999999999999999999 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 404),
]


@pytest.mark.timeout(120)
def test_every_malformed_request_gets_an_http_answer(tiny_artifact, tmp_path):
    with serving(tiny_artifact, tmp_path, max_upload_bytes=100_000, read_timeout_s=2, request_timeout_s=3) as (view, _, _):
        for data, expected in MALFORMED:
            answer = raw(view.port, data, timeout=8)
            assert status_of(answer) == expected, (data[:80], answer[:200])
            assert b"Content-Type: application/json" in answer and "error" in body_of(answer)
        answer = raw(view.port, b"PUT /api/inspect HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n")
        assert b"Allow: POST" in answer
        assert status_of(request(view.port, "GET", "/healthz")) == 200  # and the server is still fine


@pytest.mark.timeout(60)
def test_head_on_the_stream_returns_headers_only(tiny_artifact, tmp_path):
    with serving(tiny_artifact, tmp_path) as (view, _, _):
        start = time.monotonic()
        answer = raw(view.port, b"HEAD /stream.mjpg HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", timeout=10)
        assert time.monotonic() - start < 3  # did not stream until the timeout
        head, _, rest = answer.partition(b"\r\n\r\n")
        assert status_of(answer) == 200 and b"multipart/x-mixed-replace; boundary=frame" in head and rest == b""
        answer = raw(view.port, b"HEAD /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        assert status_of(answer) == 200 and answer.endswith(b"\r\n\r\n")


@pytest.mark.timeout(60)
def test_keeps_answering_after_the_source_finished(tiny_artifact, tmp_path, elpv_paths):
    import cv2

    from anomedge.runtime.sources import Frame

    with serving(tiny_artifact, tmp_path) as (view, runner, _):
        for i in range(3):
            runner.process(Frame("cells", i, time.time(), image=cv2.imread(str(elpv_paths[i]), cv2.IMREAD_GRAYSCALE)))
        assert body_of(request(view.port, "GET", "/api/status"))["state"] == "running"
        view.finish()
        status = body_of(request(view.port, "GET", "/api/status"))
        assert status["state"] == "finished" and status["counters"]["frames"] == 3 and status["finished_at"] > 0
        assert "anomedge_source_finished 1" in request(view.port, "GET", "/metrics").decode()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_ad_run_keeps_serving_after_a_folder_ends(tiny_artifact, elpv_paths, tmp_path):
    import json
    import shutil
    import signal
    import subprocess
    import sys

    folder = tmp_path / "cells"
    folder.mkdir()
    for p in elpv_paths[:3]:
        shutil.copy(p, folder / p.name)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-c", "from anomedge.cli.run import main; main()", str(tiny_artifact.root),
                             "--source", str(folder), "--serve", f"127.0.0.1:{port}", "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline, status = time.monotonic() + 60, {}
        while status.get("state") != "finished":
            assert time.monotonic() < deadline and proc.poll() is None, "the run did not reach 'finished' while serving"
            time.sleep(0.3)
            try:
                status = body_of(request(port, "GET", "/api/status", timeout=3))
            except (OSError, json.JSONDecodeError, IndexError):
                status = {}
        assert status["counters"]["frames"] == 3
        time.sleep(1.0)
        assert proc.poll() is None and status_of(request(port, "GET", "/healthz")) == 200  # still up
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "source finished" in err and "3 frames" in out


@pytest.mark.timeout(60)
def test_stream_viewers_are_capped(tiny_artifact, tmp_path):
    with serving(tiny_artifact, tmp_path, max_streams=1) as (view, _, _):
        viewer = socket.create_connection(("127.0.0.1", view.port), timeout=5)
        try:
            viewer.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert viewer.recv(64).startswith(b"HTTP/1.1 200")
            answer = request(view.port, "GET", "/stream.mjpg", timeout=5)
            assert status_of(answer) == 503 and "stream viewers" in body_of(answer)["error"]
        finally:
            viewer.close()
        deadline = time.monotonic() + 10  # the slot comes back when the viewer has gone
        while True:
            answer = raw(view.port, b"GET /stream.mjpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", timeout=1.5)
            if status_of(answer) == 200:
                break
            assert time.monotonic() < deadline, answer[:100]
