"""Sinks and evidence: JSONL/CSV append + rotation, a writer killed with SIGKILL leaves a complete
file up to that point, regions of a thresholded map, overlays, normalised scores, unwritable paths."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from anomedge.errors import InputError
from anomedge.runtime.evidence import EvidenceWriter, draw, heat_range, regions
from anomedge.runtime.runner import normalizer
from anomedge.runtime.sinks import CsvSink, JsonlSink


def rec(i, label="OK", **extra):
    return {"source": "cam", "index": i, "timestamp": 1.0 + i, "label": label, "score": 0.5 * i,
            "threshold": 2.0, "ms": {"total": 1.0}, **extra}


def test_jsonl_appends_and_rotates_without_losing_records(tmp_path):
    path = tmp_path / "d.jsonl"
    with JsonlSink(path, rotate_mb=0.001) as sink:  # ~1 kB per file
        for i in range(40):
            sink.write(rec(i))
        rotated = sink.rotated_files()
    assert len(rotated) >= 2 and rotated[0].name == "d.0001.jsonl"
    lines = [json.loads(l) for p in [*rotated, path] for l in p.read_text().splitlines()]
    assert [r["index"] for r in lines] == list(range(40))
    assert all(p.stat().st_size < 1200 for p in rotated)
    with JsonlSink(path) as sink:  # a restart appends
        sink.write(rec(40))
    assert json.loads(path.read_text().splitlines()[-1])["index"] == 40


def test_csv_header_once_and_json_columns(tmp_path):
    path = tmp_path / "d.csv"
    with CsvSink(path) as sink:
        sink.write(rec(0))
        sink.write(rec(1, "NG", boxes=[[1, 2, 3, 4]], overlay="x.png"))
    with CsvSink(path) as sink:
        sink.write(rec(2, "ERROR", error="bad, \"quoted\" file"))
    rows = list(csv.DictReader(path.open()))
    assert [r["index"] for r in rows] == ["0", "1", "2"]
    assert json.loads(rows[1]["boxes"]) == [[1, 2, 3, 4]] and rows[1]["overlay"] == "x.png"
    assert rows[2]["error"] == 'bad, "quoted" file' and rows[0]["total_ms"] == "1.0" and rows[0]["infer_ms"] == ""
    from datetime import datetime

    assert datetime.fromisoformat(rows[0]["time"]).timestamp() == pytest.approx(float(rows[0]["timestamp"]), abs=1e-3)
    assert rows[0]["time"].endswith("+00:00")


def test_unwritable_paths_fail_at_start(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InputError, match="--jsonl"):
        JsonlSink(blocker / "d.jsonl")
    with pytest.raises(InputError, match="--csv"):
        CsvSink(blocker / "d.csv")
    with pytest.raises(InputError, match="--save-ng"):
        EvidenceWriter(blocker / "ng")


WRITER = """
import sys
from anomedge.runtime.sinks import JsonlSink
sink = JsonlSink(sys.argv[1], rotate_mb=float(sys.argv[2]))
i = 0
while True:
    sink.write({"source": "cam", "index": i, "label": "OK", "score": i * 0.25, "pad": "x" * 200})
    i += 1
"""


@pytest.mark.timeout(60)
def test_sigkill_leaves_every_written_record_intact(tmp_path):
    path = tmp_path / "d.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), "0.05"])
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (not path.exists() or len(list(tmp_path.glob("d.0*.jsonl"))) < 2):
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    files = sorted(tmp_path.glob("d.0*.jsonl")) + [path]
    assert len(files) >= 3
    text = "".join(p.read_text() for p in files)
    lines = text.split("\n")
    # every complete line parses, and the indices run without a gap; only the line in flight may be partial
    complete = lines[:-1]
    records = [json.loads(l) for l in complete]
    assert [r["index"] for r in records] == list(range(len(records)))
    assert len(records) > 100
    if lines[-1]:
        with pytest.raises(ValueError):
            json.loads(lines[-1])


def test_regions_of_a_thresholded_map():
    full = np.zeros((100, 120), np.float32)
    full[10:30, 20:60] = 5.0      # 40x20 region
    full[70:75, 100:103] = 4.0    # 3x5 region
    full[50, 50] = 9.0            # one pixel: below the minimum area
    assert regions(full, 3.0) == [[20, 10, 40, 20], [100, 70, 3, 5]]
    assert regions(full, 4.5) == [[20, 10, 40, 20]]
    assert regions(full, 10.0) == []


def test_evidence_writes_overlay_and_raw_for_ng_and_every_nth_ok(tmp_path, chelsea_bgr):
    import cv2

    frame = chelsea_bgr[:120, :160]
    full = np.zeros(frame.shape[:2], np.float32)
    full[40:80, 50:100] = 10.0
    writer = EvidenceWriter(tmp_path / "ng", save_every=2)
    record = rec(7, "NG", source="/line/cell 7.png", boxes=regions(full, 5.0))
    path = writer.save(frame, full, record, 0.0, 10.0)
    assert path.endswith("cell_7_00000007_overlay.png")
    picture = cv2.imread(path)
    assert picture.shape == frame.shape
    assert tuple(picture[40, 75]) == (0, 0, 255)  # the box edge, red
    assert picture[60, 75, 2] > 100 and np.abs(picture[5, 5].astype(int) - frame[5, 5]).max() > 10  # heat blended
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "ng" / "cell_7_00000007_raw.png")), frame)
    for i in range(4):
        assert writer.save(frame, None, rec(i), 0.0, 1.0) is None
    assert sorted(p.name for p in (tmp_path / "ng" / "ok").iterdir()) == ["cam_00000001.png", "cam_00000003.png"]


def test_draw_accepts_gray_and_16bit_frames():
    gray16 = (np.arange(50 * 40).reshape(50, 40) * 30).astype(np.uint16)
    out = draw(gray16, np.ones((50, 40), np.float32), [[1, 1, 5, 5]], 0.0, 2.0)
    assert out.shape == (50, 40, 3) and out.dtype == np.uint8


def test_normalizer_piecewise_linear_threshold_to_half():
    apply = normalizer({"normalization": {"min": 10.0, "threshold": 20.0, "max": 40.0}}, 20.0)
    np.testing.assert_allclose([apply(s) for s in (0, 10, 15, 20, 30, 40, 99)], [0, 0, 0.25, 0.5, 0.75, 1, 1], atol=1e-12)
    moved = normalizer({"normalization": {"min": 10.0, "threshold": 20.0, "max": 40.0}}, 30.0)
    assert moved(30.0) == 0.5  # --threshold override: the threshold in use maps to 0.5
    assert normalizer({}, 20.0) is None and normalizer({"normalization": {"min": 1}}, 2.0) is None


def test_heat_range_prefers_normalization():
    assert heat_range({"normalization": {"min": 1.0, "threshold": 2.0, "max": 5.0}}, 2.0) == (1.0, 5.0)
    low, high = heat_range({"good_scores": {"min": 30.0}}, 40.0)
    assert (low, high) == (30.0, 50.0)
