"""Live view server on a real artifact: /healthz, /api/status, /metrics, /frame.jpg, and POST
/api/inspect with raw and multipart bodies, size limit, content check and the overlay PNG."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid

import cv2
import numpy as np
import pytest

from anomedge.runtime.pipeline import Inspector
from anomedge.runtime.runner import Runner
from anomedge.runtime.serve import LiveView, decode_upload, sniff
from anomedge.runtime.sinks import JsonlSink
from anomedge.runtime.sources import Frame


@pytest.fixture()
def live(tiny_artifact, tmp_path):
    sink = JsonlSink(tmp_path / "d.jsonl")
    with Inspector(tiny_artifact, "onnxruntime") as inspector:
        runner = Runner(inspector, [sink.write])
        view = LiveView(runner, {"artifact": "tiny", "backend": "onnxruntime"}, "127.0.0.1", 0,
                        max_upload_bytes=200_000).start()
        runner.observers.append(view.update)
        try:
            yield view, runner, tmp_path / "d.jsonl"
        finally:
            view.close()
            sink.close()


def get(url, timeout=10):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def post(url, body, ctype, timeout=20):
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": ctype})
    return get(request, timeout)


def png_bytes(path):
    return path.read_bytes()


@pytest.mark.timeout(60)
def test_status_metrics_health_and_frame(live, elpv_paths):
    view, runner, _ = live
    code, _, body = get(view.url + "healthz")
    assert code == 200 and json.loads(body) == {"status": "ok"}
    assert get(view.url + "frame.jpg")[0] == 204  # nothing inspected yet
    image = cv2.imread(str(elpv_paths[0]), cv2.IMREAD_GRAYSCALE)
    for i in range(3):
        runner.process(Frame("cam", i, 0.0, image=image), dropped=0)
    status = json.loads(get(view.url + "api/status")[2])
    assert status["counters"]["frames"] == 3 and status["threshold"] == pytest.approx(runner.threshold)
    assert [r["index"] for r in status["last"]] == [0, 1, 2] and status["artifact"] == "tiny"
    code, headers, text = get(view.url + "metrics")
    lines = text.decode().splitlines()
    assert code == 200 and headers["Content-Type"].startswith("text/plain")
    assert "anomedge_frames_total 3" in lines and "# TYPE anomedge_frames_total counter" in lines
    assert any(l.startswith('anomedge_latency_ms{quantile="0.99"} ') for l in lines)
    for line in lines:  # Prometheus text: comments or "name[{labels}] number"
        if not line.startswith("#"):
            float(line.rsplit(" ", 1)[1])
    code, headers, jpeg = get(view.url + "frame.jpg")
    picture = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert code == 200 and picture.shape == (300, 300, 3)
    # the overlay is colour while the ELPV frame is gray
    assert np.abs(picture[:, :, 2].astype(int) - picture[:, :, 0]).mean() > 10
    assert "<title>anomedge live</title>" in get(view.url)[2].decode()


@pytest.mark.timeout(60)
def test_inspect_raw_and_multipart_uploads(live, elpv_paths):
    view, runner, jsonl = live
    data = png_bytes(elpv_paths[1])
    code, _, body = post(view.url + "api/inspect", data, "image/png")
    record = json.loads(body)
    assert code == 200 and record["label"] in ("OK", "NG") and record["source"].startswith("api:")
    expected = Inspector.decide(runner.inspector, record["score"])
    assert record["label"] == expected
    boundary = uuid.uuid4().hex
    multipart = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nline 3\r\n"
                 f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"c.png\"\r\n"
                 "Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    code, _, body = post(view.url + "api/inspect", multipart, f"multipart/form-data; boundary={boundary}")
    assert code == 200
    np.testing.assert_allclose(json.loads(body)["score"], record["score"], rtol=1e-6)
    code, headers, png = post(view.url + "api/inspect?overlay=1", data, "application/octet-stream")
    assert code == 200 and headers["Content-Type"] == "image/png" and png.startswith(b"\x89PNG")
    assert json.loads(headers["X-Anomedge-Decision"])["score"] == pytest.approx(record["score"], rel=1e-6)
    assert cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR).shape == (300, 300, 3)
    logged = [json.loads(l) for l in jsonl.read_text().splitlines()]
    assert len(logged) == 3 and all(r["source"].startswith("api:") for r in logged)
    assert json.loads(get(view.url + "api/status")[2])["counters"]["api_requests"] == 3


@pytest.mark.timeout(60)
def test_inspect_refuses_big_and_non_image_bodies(live):
    view, runner, _ = live
    code, _, body = post(view.url + "api/inspect", b"\x89PNG\r\n\x1a\n" + b"0" * 300_000, "image/png")
    assert code == 413 and "limit" in json.loads(body)["error"]
    code, _, body = post(view.url + "api/inspect", b"<html>hello</html>", "image/png")
    assert code == 415 and "not an image" in json.loads(body)["error"]
    code, _, body = post(view.url + "api/inspect", b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, "image/png")
    assert code == 400 and "image size from its header" in json.loads(body)["error"]  # checked before decoding
    assert runner.summary.frames == 0  # refused uploads are not inspections
    assert get(view.url + "nothing")[0] == 404


def test_sniff_and_decode_upload():
    ok, png = cv2.imencode(".png", np.zeros((4, 5), np.uint16))
    assert sniff(png.tobytes()) == "png"
    assert decode_upload(png.tobytes()).dtype == np.uint16
    assert sniff(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "webp" and sniff(b"GIF89a") is None
