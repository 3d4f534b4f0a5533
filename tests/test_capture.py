"""Capture thread (latest / all policies, errors handed over), back-off, and a live MJPEG-over-HTTP
stream through cv2.VideoCapture that stops mid-stream and comes back: the reconnect is counted and
the frames after it arrive."""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np
import pytest

from anomedge.runtime.capture import Backoff, CaptureThread
from anomedge.runtime.sources import CaptureSettings, Frame, VideoSource


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MjpegServer:
    """multipart/x-mixed-replace JPEG stream on 127.0.0.1: ``per_connection`` frames of gray levels
    ``base + k % 10``, then the connection closes."""

    def __init__(self, port: int, base: int, per_connection: int, fps: float = 100.0):
        levels = [cv2.imencode(".jpg", np.full((48, 64, 3), base + k, np.uint8))[1].tobytes() for k in range(10)]

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                try:
                    for k in range(per_connection):
                        data = levels[k % 10]
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(data)
                                         + data + b"\r\n")
                        time.sleep(1 / fps)
                except OSError:
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def numbered(n: int):
    for i in range(n):
        yield Frame("test", i, time.time(), image=np.full((2, 2), i, np.uint8))


def test_policy_all_keeps_every_frame_in_order():
    got = [f.index for f in CaptureThread(numbered(50), "all", maxsize=2)]
    assert got == list(range(50))


def test_policy_latest_drops_stale_frames_and_counts_them():
    capture = CaptureThread(numbered(200), "latest", maxsize=2)
    got = []
    for frame in capture:
        got.append(frame.index)
        time.sleep(0.002)  # a slow consumer: the reader outruns it
    assert got == sorted(got) and got[-1] == 199  # in order, and the newest frame is never lost
    assert capture.dropped > 0 and len(got) + capture.dropped == 200


def test_source_errors_reach_the_consumer():
    def broken():
        yield Frame("x", 0, 0.0, image=np.zeros((2, 2), np.uint8))
        raise RuntimeError("driver exploded")

    capture = CaptureThread(broken(), "all")
    with pytest.raises(RuntimeError, match="driver exploded"):
        list(capture)


def test_stop_ends_iteration_of_an_endless_source():
    def endless():
        i = 0
        while True:
            yield Frame("x", i, 0.0, image=np.zeros((2, 2), np.uint8))
            i += 1

    capture = CaptureThread(endless(), "latest")
    for frame in capture:
        if frame.index > 20:
            capture.stop()
    assert capture.stop_event.is_set()


def test_backoff_doubles_and_is_bounded():
    backoff = Backoff(0.5, 3.0)
    assert [backoff.next_delay() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    backoff.reset()
    assert backoff.next_delay() == 0.5
    with pytest.raises(ValueError):
        CaptureThread([], "newest")


@pytest.mark.timeout(60)
def test_stream_that_stops_mid_stream_is_reconnected():
    port = free_port()
    first = MjpegServer(port, base=10, per_connection=15)
    url = f"http://127.0.0.1:{port}/stream.mjpg"
    settings = CaptureSettings(open_timeout_s=3, read_timeout_s=3, reconnect_initial_s=0.2, reconnect_max_s=1.0)
    source = VideoSource(url, settings)
    assert source.live
    capture = CaptureThread(source, "all", maxsize=4)
    levels, reconnects_seen = [], []

    def restart_later():
        first.close()  # the camera goes away mid-stream ...
        time.sleep(1.0)
        holder.append(MjpegServer(port, base=100, per_connection=10**6))  # ... and comes back

    holder: list[MjpegServer] = []
    restarter = None
    try:
        for frame in capture:
            levels.append(int(np.median(frame.image)))
            reconnects_seen.append(source.reconnects)
            if len(levels) == 8 and restarter is None:
                restarter = threading.Thread(target=restart_later, daemon=True)
                restarter.start()
            if levels[-1] >= 100 and sum(level >= 100 for level in levels) >= 5:
                break
    finally:
        capture.stop()
        if restarter is not None:
            restarter.join(10)
        for server in holder:
            server.close()
    assert source.reconnects >= 1
    after = [level for level, r in zip(levels, reconnects_seen) if r >= 1]
    assert len(after) >= 5 and all(level >= 99 for level in after)  # frames of the second server
    assert min(levels) <= 26  # and frames of the first one before it


@pytest.mark.timeout(60)
def test_exit_on_disconnect_ends_the_source():
    port = free_port()
    server = MjpegServer(port, base=10, per_connection=5)
    settings = CaptureSettings(open_timeout_s=3, read_timeout_s=3, exit_on_disconnect=True)
    source = VideoSource(f"http://127.0.0.1:{port}/s.mjpg", settings)
    try:
        frames = list(source)
    finally:
        server.close()
    assert 1 <= len(frames) <= 5 and source.disconnected and source.reconnects == 0
