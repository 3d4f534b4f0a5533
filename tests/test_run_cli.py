"""ad-run on the production-line sources: a video file (the cv2.VideoCapture path a camera takes),
an MJPEG stream, a hot folder across restarts; SIGTERM mid-run; unwritable outputs and a silent URL
fail at start-up with one line; NG evidence, CSV, ROI, webhook and MQTT outputs."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest

CODE = "from anomedge.cli.run import main; main()"


def ad_run(*args, timeout=120):
    return subprocess.run([sys.executable, "-c", CODE, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cell_video(tmp_path_factory, elpv_paths):
    """An MJPG .avi of 10 ELPV cells (300x300, BGR)."""
    path = tmp_path_factory.mktemp("video") / "cells.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (300, 300))
    for p in elpv_paths[20:30]:
        writer.write(cv2.imread(str(p), cv2.IMREAD_COLOR))
    writer.release()
    return path


def records(path):
    return [json.loads(l) for l in Path(path).read_text().splitlines()]


@pytest.mark.timeout(120)
def test_video_file_gives_a_record_per_frame_with_evidence(tiny_artifact, cell_video, tmp_path):
    out, table, ng = tmp_path / "d.jsonl", tmp_path / "d.csv", tmp_path / "ng"
    result = ad_run(tiny_artifact.root, "--source", cell_video, "--jsonl", out, "--csv", table, "--save-ng", ng,
                    "--threshold", "0", "--quiet")
    assert result.returncode == 0, result.stderr
    rows = records(out)
    assert [r["index"] for r in rows] == list(range(10)) and {r["label"] for r in rows} == {"NG"}
    for r in rows:
        assert r["source"] == str(cell_video) and r["dropped"] == 0 and r["threshold"] == 0
        assert r["boxes"] and all(len(b) == 4 for b in r["boxes"])
        overlay = cv2.imread(r["overlay"])
        assert overlay.shape == (300, 300, 3)
        assert Path(r["overlay"].replace("_overlay.png", "_raw.png")).is_file()
    assert [row["index"] for row in csv.DictReader(table.open())] == [str(i) for i in range(10)]
    assert "10 frames: 0 OK, 10 NG, 0 errors" in result.stdout and "0 dropped, 0 reconnects" in result.stdout


@pytest.mark.timeout(120)
def test_sigterm_finishes_flushes_and_summarises(tiny_artifact, cell_video, tmp_path):
    out = tmp_path / "d.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", CODE, str(tiny_artifact.root), "--source", str(cell_video), "--loop",
                             "--jsonl", str(out), "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 25):
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    rows = records(out)
    assert len(rows) >= 25 and [r["index"] for r in rows] == list(range(len(rows)))  # looped past the 10 frames
    assert f"{len(rows)} frames:" in stdout and "latency p50" in stdout and "p99" in stdout


def test_unwritable_output_fails_before_any_frame(tiny_artifact, cell_video, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    out = tmp_path / "d.jsonl"
    result = ad_run(tiny_artifact.root, "--source", cell_video, "--jsonl", out, "--save-ng", blocker / "ng", "--quiet")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "--save-ng" in lines[0] and lines[0].startswith("error: ")
    assert not out.exists() or out.read_text() == ""


@pytest.mark.timeout(60)
def test_url_that_never_connects_is_one_line_after_the_timeout(tiny_artifact):
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/mjpeg"
        start = time.monotonic()
        result = ad_run(tiny_artifact.root, "--source", url, "--open-timeout-s", "1", "--quiet", timeout=45)
        elapsed = time.monotonic() - start
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "cannot open the stream within 1 s" in lines[0] and elapsed < 30


class Mjpeg:
    def __init__(self, frames: list[np.ndarray], per_connection: int):
        jpegs = [cv2.imencode(".jpg", f)[1].tobytes() for f in frames]

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                try:
                    for k in range(per_connection):
                        data = jpegs[k % len(jpegs)]
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(data)
                                         + data + b"\r\n")
                        time.sleep(0.02)
                except OSError:
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/stream.mjpg"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.timeout(90)
def test_mjpeg_stream_with_roi_max_frames_and_exit_on_disconnect(tiny_artifact, elpv_paths, tmp_path):
    frames = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in elpv_paths[20:24]]
    stream = Mjpeg(frames, per_connection=1000)
    try:
        out = tmp_path / "a.jsonl"
        result = ad_run(tiny_artifact.root, "--source", stream.url, "--max-frames", "8", "--roi", "50,50,200,200",
                        "--jsonl", out, "--quiet")
        assert result.returncode == 0, result.stderr
        rows = records(out)
        assert len(rows) == 8 and all(r["label"] in ("OK", "NG") and "dropped" in r for r in rows)
        assert "8 frames" in result.stdout
        too_big = ad_run(tiny_artifact.root, "--source", stream.url, "--max-frames", "2", "--roi", "0,0,400,10",
                         "--jsonl", tmp_path / "b.jsonl", "--quiet")
        assert too_big.returncode == 0
        assert {r["label"] for r in records(tmp_path / "b.jsonl")} == {"ERROR"}
        assert "does not fit in the 300x300 frame" in records(tmp_path / "b.jsonl")[0]["error"]
    finally:
        stream.close()
    short = Mjpeg(frames, per_connection=6)
    try:
        out = tmp_path / "c.jsonl"
        result = ad_run(tiny_artifact.root, "--source", short.url, "--policy", "all", "--exit-on-disconnect",
                        "--jsonl", out, "--quiet")
    finally:
        short.close()
    assert result.returncode == 1 and "disconnected (--exit-on-disconnect)" in result.stderr
    assert 1 <= len(records(out)) <= 6


@pytest.mark.timeout(120)
def test_watch_processes_each_file_once_across_restarts(tiny_artifact, elpv_paths, tmp_path):
    hot = tmp_path / "hot"
    hot.mkdir()
    for p in elpv_paths[:2]:
        shutil.copy(p, hot / p.name)
        os.utime(hot / p.name, (time.time() - 5, time.time() - 5))
    out = tmp_path / "d.jsonl"
    first = ad_run(tiny_artifact.root, "--source", hot, "--watch", "--max-frames", "2", "--jsonl", out, "--quiet")
    assert first.returncode == 0, first.stderr
    shutil.copy(elpv_paths[2], hot / elpv_paths[2].name)
    second = ad_run(tiny_artifact.root, "--source", hot, "--watch", "--max-frames", "1", "--jsonl", out, "--quiet")
    assert second.returncode == 0, second.stderr
    names = [Path(r["source"]).name for r in records(out)]
    assert names == [p.name for p in elpv_paths[:3]]


@pytest.mark.timeout(120)
def test_webhook_gets_each_ng_record(tiny_artifact, cell_video, tmp_path):
    received = []

    class Hook(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        result = ad_run(tiny_artifact.root, "--source", cell_video, "--threshold", "0", "--quiet",
                        "--webhook", f"http://127.0.0.1:{server.server_address[1]}/ng")
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 0, result.stderr
    assert sorted(r["index"] for r in received) == list(range(10)) and {r["label"] for r in received} == {"NG"}


def test_mqtt_without_paho_names_the_pip_command(tiny_artifact, cell_video, tmp_path):
    blocker = tmp_path / "site"
    (blocker / "paho").mkdir(parents=True)
    (blocker / "paho" / "__init__.py").write_text("raise ImportError('blocked for the test')\n")
    env = {**os.environ, "PYTHONPATH": str(blocker)}
    result = subprocess.run([sys.executable, "-c", CODE, str(tiny_artifact.root), "--source", str(cell_video),
                             "--mqtt", "127.0.0.1:1883/line", "--quiet"], capture_output=True, text=True, env=env, timeout=60)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "pip install paho-mqtt" in lines[0]


@pytest.mark.timeout(90)
def test_mqtt_publishes_every_record_to_a_local_broker(tiny_artifact, cell_video, tmp_path):
    mosquitto = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
    if mosquitto is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto, or run .ci/system-deps.sh)")
    mqtt = pytest.importorskip("paho.mqtt.client", reason="paho-mqtt is not installed (pip install paho-mqtt)")
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    broker = subprocess.Popen([mosquitto, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    got, subscribed = [], threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.on_connect = lambda c, *a: (c.subscribe("line/1/#", qos=1), None)[1]
    client.on_subscribe = lambda *a: subscribed.set()
    client.on_message = lambda c, u, m: got.append(json.loads(m.payload))
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client.connect("127.0.0.1", port)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        client.loop_start()
        assert subscribed.wait(10)
        result = ad_run(tiny_artifact.root, "--source", cell_video, "--mqtt", f"127.0.0.1:{port}/line/1/decisions",
                        "--quiet")
        assert result.returncode == 0, result.stderr
        deadline = time.monotonic() + 10
        while len(got) < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        client.loop_stop()
        client.disconnect()
        broker.terminate()
        broker.wait(10)
    assert sorted(r["index"] for r in got) == list(range(10))


@pytest.mark.timeout(120)
def test_a_corrupt_frame_is_an_error_record_and_the_video_goes_on(tiny_artifact, cell_video, tmp_path):
    data = bytearray(cell_video.read_bytes())
    starts = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]
    data[starts[4]:starts[4] + 300] = bytes(300)  # frame 4's JPEG bytes zeroed; the AVI index intact
    video = tmp_path / "corrupt.avi"
    video.write_bytes(bytes(data))
    out = tmp_path / "d.jsonl"
    result = ad_run(tiny_artifact.root, "--source", video, "--jsonl", out, "--quiet")
    assert result.returncode == 0, result.stderr
    rows = records(out)
    assert [r["index"] for r in rows] == list(range(10))
    assert [r["label"] == "ERROR" for r in rows] == [i == 4 for i in range(10)] and "does not decode" in rows[4]["error"]
    # the other frames score as in the clean video
    clean_out = tmp_path / "clean.jsonl"
    assert ad_run(tiny_artifact.root, "--source", cell_video, "--jsonl", clean_out, "--quiet").returncode == 0
    clean = records(clean_out)
    np.testing.assert_allclose([r["score"] for r in rows if r["label"] != "ERROR"],
                               [r["score"] for i, r in enumerate(clean) if i != 4], rtol=1e-5)
    assert "10 frames" in result.stdout and "1 errors" in result.stdout
