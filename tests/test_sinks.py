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
from anomedge.runtime.evidence import EvidenceWriter, draw, regions
from anomedge.runtime.sinks import CSV_COLUMNS, CsvSink, JsonlSink


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
    assert rows[2]["error"] == 'bad, "quoted" file' and json.loads(rows[0]["ms"]) == {"total": 1.0}


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




# --- trust: a record is written whole or not at all; a full disk is an OSError, never a torn line ------------
FILL = r"""
import errno, json, os, resource, signal, sys
from anomedge.runtime.sinks import CSV_COLUMNS, CsvSink, JsonlSink
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit write() returns short / EFBIG instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[3]), int(sys.argv[3])))
sink = (JsonlSink if sys.argv[1] == "jsonl" else CsvSink)(sys.argv[2])
written = 0
try:
    for i in range(1000):
        sink.write({"source": "cam", "index": i, "timestamp": 1.0 + i, "label": "OK", "score": 0.123456789 * i,
                    "threshold": 2.0, "ms": {"total": 1.0, "infer": 0.5}})
        written += 1
except OSError as exc:
    print(written, exc.errno in (errno.EFBIG, errno.ENOSPC))
sink.close()
"""


@pytest.mark.parametrize("kind", ["jsonl", "csv"])
def test_a_write_that_hits_the_file_size_limit_leaves_only_whole_records(tmp_path, kind):
    path = tmp_path / f"d.{kind}"
    out = subprocess.run([sys.executable, "-c", FILL, kind, str(path), "1000"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    written, typed = out.stdout.split()
    assert typed == "True" and 0 < int(written) < 1000
    text = path.read_text()
    assert text.endswith("\n") and len(text) <= 1000
    if kind == "jsonl":
        rows = [json.loads(line) for line in text.splitlines()]
    else:
        rows = list(csv.DictReader(text.splitlines()))
    assert [int(r["index"]) for r in rows] == list(range(int(written)))


def test_dev_full_raises_enospc_and_closes_quietly():
    sink = JsonlSink("/dev/full")
    with pytest.raises(OSError) as info:
        sink.write(rec(0))
    assert info.value.errno == 28
    sink.close()
    sink.close()  # twice: nothing buffered, nothing raised


def test_a_full_tmpfs_leaves_no_torn_line(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root and mount rights)")
    try:
        sink = JsonlSink(mount / "d.jsonl")
        written = 0
        with pytest.raises(OSError) as info:
            for i in range(10_000):
                sink.write(rec(i, error="x" * 300))
                written += 1
        sink.close()
        assert info.value.errno == 28
        lines = (mount / "d.jsonl").read_text().splitlines(keepends=True)
        assert len(lines) == written and all(l.endswith("\n") for l in lines)
        assert [json.loads(l)["index"] for l in lines] == list(range(written))
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_csv_has_iso_8601_time_and_non_finite_numbers_are_null(tmp_path):
    from datetime import datetime

    path = tmp_path / "d.csv"
    with CsvSink(path) as sink:
        sink.write(rec(0, timestamp=1767225600.25))
    row = next(csv.DictReader(path.open()))
    assert row["time"] == "2026-01-01T00:00:00.250+00:00"
    assert datetime.fromisoformat(row["time"]).timestamp() == float(row["timestamp"])
    with JsonlSink(tmp_path / "d.jsonl") as sink:
        sink.write(rec(1, score=float("nan"), ms={"total": float("inf")}))
    assert json.loads((tmp_path / "d.jsonl").read_text()) == {**rec(1), "score": None, "ms": {"total": None}}


def test_human_line_is_one_readable_line():
    from anomedge.runtime.sinks import human_line

    ng = rec(12, "NG", source="/line/cell_0012.png", score=1.8412, threshold=1.2, ms={"total": 18.26}, boxes=[[1, 2, 3, 4]])
    assert human_line(ng) == "frame 12  cell_0012.png  NG  score 1.841 (thr 1.2)  18.3 ms  1 box"
    err = {"source": "/hot/bad\nname.png", "index": 3, "label": "ERROR", "error": "x: cannot read (permission denied)"}
    assert human_line(err) == "frame 3  bad\\nname.png  ERROR  x: cannot read (permission denied)"


def test_console_sink_prints_json_only_when_asked():
    import io

    from anomedge.runtime.sinks import ConsoleSink

    readable, as_json = io.StringIO(), io.StringIO()
    ConsoleSink(readable)(rec(1))
    ConsoleSink(as_json, as_json=True)(rec(1))
    assert readable.getvalue() == "frame 1  cam  OK  score 0.5 (thr 2)  1.0 ms\n"
    assert json.loads(as_json.getvalue()) == rec(1)


def test_a_csv_with_other_columns_is_rotated_aside_not_mixed(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("source,index,timestamp,label\ncam,0,1.0,OK\n")  # an older version's columns
    with CsvSink(path) as sink:
        sink.write(rec(1))
    assert (tmp_path / "d.0001.csv").read_text() == "source,index,timestamp,label\ncam,0,1.0,OK\n"
    rows = list(csv.DictReader(path.open()))
    assert list(rows[0]) == list(CSV_COLUMNS) and rows[0]["index"] == "1"
    with CsvSink(path) as sink:  # same columns: appended
        sink.write(rec(2))
    assert [r["index"] for r in csv.DictReader(path.open())] == ["1", "2"]
