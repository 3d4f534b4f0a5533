"""The pipelined run loop: the sequential loop's records, bit for bit (tolerance 0: the same floats), in the
same order, on a real folder (a corrupt file and a frame that fails inspection in the middle) and a real
video (cv2.VideoWriter); stop / max-frames / a failing sink drain or end cleanly; the thread budget."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest

from anomedge.errors import InputError
from anomedge.runtime.capture import CaptureThread
from anomedge.runtime.pipeline import Inspector
from anomedge.runtime.pipelined import MAX_DEPTH, ThreadBudget, check_depth, fit_kernel_threads, run_pipelined
from anomedge.runtime.runner import Runner
from anomedge.runtime.sinks import JsonlSink, SinkError
from anomedge.runtime.sources import FolderSource, VideoSource

TIMING = ("ms", "timestamp", "evidence_ms")


def strip(records):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


@pytest.fixture(scope="module")
def inspector(tiny_artifact):
    with Inspector(tiny_artifact, threads=1, knn_kernel="numpy") as ins:
        yield ins


@pytest.fixture()
def folder(tmp_path, elpv_paths):
    """8 ELPV cells, a truncated PNG at position 3 and a 16×16 image (smaller than the ROI) at position 6."""
    root = tmp_path / "cells"
    root.mkdir()
    for position, p in zip((0, 1, 2, 4, 5, 7, 8, 9), elpv_paths):
        shutil.copy(p, root / f"{position:02d}.png")
    (root / "03.png").write_bytes(elpv_paths[9].read_bytes()[:300])
    cv2.imwrite(str(root / "06.png"), np.zeros((16, 16), np.uint8))
    return root


@pytest.fixture(scope="module")
def video(tmp_path_factory, elpv_paths):
    path = tmp_path_factory.mktemp("video") / "cells.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (96, 96))
    for p in elpv_paths[:12]:
        writer.write(cv2.resize(cv2.imread(str(p)), (96, 96)))
    writer.release()
    return path


def records_of(inspector, frames, depth, roi=None, **kw):
    records = []
    runner = Runner(inspector, [records.append], roi=roi, watch_thresholds=False, drift=False)
    run_pipelined(runner, frames, depth, **kw)
    return records


@pytest.mark.parametrize("depth", [1, 2, 4, MAX_DEPTH])
def test_folder_records_equal_the_sequential_loop_with_failures_in_place(inspector, folder, depth):
    roi = (0, 0, 40, 40)
    sequential = records_of(inspector, FolderSource(folder), 0, roi)
    pipelined = records_of(inspector, FolderSource(folder), depth, roi)
    assert strip(pipelined) == strip(sequential)
    labels = [r["label"] for r in pipelined]
    assert len(pipelined) == 10 and labels[3] == labels[6] == "ERROR" and labels.count("ERROR") == 2
    assert "not a readable image" in pipelined[3]["error"] and "does not fit" in pipelined[6]["error"]
    assert all(isinstance(r["score"], float) for i, r in enumerate(pipelined) if i not in (3, 6))


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_video_records_equal_the_sequential_loop(inspector, video, depth):
    sequential = records_of(inspector, CaptureThread(VideoSource(str(video)), "all"), 0)
    pipelined = records_of(inspector, CaptureThread(VideoSource(str(video)), "all"), depth, workers=2)
    assert [r["index"] for r in pipelined] == list(range(12))
    assert strip(pipelined) == strip(sequential)


def test_onnxruntime_kernel_with_the_budget_gives_the_same_scores(tiny_artifact, video):
    """The kNN kernel's session rebuilt with the budget's threads: the same distances (tolerance 0)."""
    with Inspector(tiny_artifact, threads=2, knn_kernel="onnxruntime") as wide, \
            Inspector(tiny_artifact, threads=1, knn_kernel="onnxruntime") as narrow:
        fit_kernel_threads(narrow, 1)
        assert narrow.stages.score.index.session.get_session_options().intra_op_num_threads == 1
        sequential = records_of(wide, VideoSource(str(video)), 0)
        pipelined = records_of(narrow, VideoSource(str(video)), 2, workers=2)
    assert strip(pipelined) == strip(sequential)


def test_stop_drains_every_frame_read_and_nothing_more(inspector, video, tmp_path):
    stop = threading.Event()
    read = []

    def frames():
        for frame in VideoSource(str(video)):
            read.append(frame.index)
            yield frame

    out = tmp_path / "d.jsonl"
    sink = JsonlSink(str(out))
    records = []

    def stop_at_third(record):
        records.append(record)
        if len(records) == 3:
            stop.set()

    runner = Runner(inspector, [sink.write, stop_at_third], watch_thresholds=False, drift=False)
    run_pipelined(runner, frames(), 4, stop_event=stop)
    sink.close()
    assert [r["index"] for r in records] == read  # every frame read has its record, in order
    assert 3 <= len(records) <= 3 + 4 + 1 < 12
    lines = out.read_text().splitlines()
    assert [json.loads(line)["index"] for line in lines] == read  # whole lines, none torn


def test_max_frames_gives_exactly_that_prefix(inspector, video):
    full = records_of(inspector, VideoSource(str(video)), 0)
    assert strip(records_of(inspector, VideoSource(str(video)), 4, max_frames=5)) == strip(full[:5])


def test_a_failing_sink_ends_the_run_and_leaves_no_worker(inspector, video):
    before = threading.active_count()
    written = []

    def disk_full(record):
        if len(written) == 4:
            raise OSError(28, "No space left on device")
        written.append(record)

    runner = Runner(inspector, [disk_full], watch_thresholds=False, drift=False)
    with pytest.raises(SinkError, match="check free space"):
        run_pipelined(runner, VideoSource(str(video)), 4)
    assert [r["index"] for r in written] == [0, 1, 2, 3] and runner.summary.frames == 4
    assert threading.active_count() == before


def test_budget_shares_the_cores_once():
    assert ThreadBudget.plan(0, cores=2) == ThreadBudget(2, 0, 2)
    assert ThreadBudget.plan(1, cores=2) == ThreadBudget(2, 1, 2)
    assert ThreadBudget.plan(2, cores=2) == ThreadBudget(2, 2, 1)
    assert ThreadBudget.plan(8, cores=2) == ThreadBudget(2, 2, 1)
    assert ThreadBudget.plan(2, cores=8) == ThreadBudget(8, 2, 4)
    assert ThreadBudget.plan(2, cores=2, threads=2) == ThreadBudget(2, 2, 2)
    for bad in (-1, MAX_DEPTH + 1, 1.5, True):
        with pytest.raises(InputError, match="--pipeline-depth"):
            check_depth(bad)


def test_budget_limits_blas_and_opencv_inside_and_restores_them():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    blas = lambda: [p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]  # noqa: E731
    outside, cv_outside = blas(), cv2.getNumThreads()
    with ThreadBudget(2, 2, 1).applied():
        assert set(blas()) <= {1} and cv2.getNumThreads() == 1
    assert blas() == outside and cv2.getNumThreads() == cv_outside


def ad_run(*args, **kw):
    return [sys.executable, "-c", "from anomedge.cli.run import main; main()", *map(str, args)]


def test_cli_pipelined_equals_sequential_and_ctrl_c_drains(tiny_artifact, video, tmp_path):
    outs = {}
    for depth in (0, 2):
        out = tmp_path / f"d{depth}.jsonl"
        done = subprocess.run(ad_run(tiny_artifact.root, "--source", video, "--jsonl", out, "--quiet",
                                     "--pipeline-depth", depth), capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        outs[depth] = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(outs[0]) == 12 and strip(outs[2]) == strip(outs[0])

    out = tmp_path / "loop.jsonl"
    proc = subprocess.Popen(ad_run(tiny_artifact.root, "--source", video, "--loop", "--jsonl", out, "--quiet",
                                   "--pipeline-depth", 4), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not out.exists() or out.read_text().count("\n") < 15):
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    said, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    records = [json.loads(line) for line in out.read_text().splitlines()]  # every line whole
    assert [r["index"] for r in records] == list(range(len(records))) and len(records) >= 15
    assert said.startswith(f"{len(records)} frames:")  # the summary counts exactly what was written


def test_cli_refuses_a_depth_out_of_range(tiny_artifact, video):
    done = subprocess.run(ad_run(tiny_artifact.root, "--source", video, "--pipeline-depth", 9), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "--pipeline-depth" in done.stderr and "0<=x<=8" in done.stderr


def test_openvino_gets_one_worker_and_the_same_records(tiny_artifact, video):
    pytest.importorskip("openvino")
    assert ThreadBudget.plan(4, cores=2, backend="openvino") == ThreadBudget(2, 1, 2)
    with Inspector(tiny_artifact, "openvino", threads=2) as ov:
        sequential = records_of(ov, VideoSource(str(video)), 0)
        pipelined = records_of(ov, VideoSource(str(video)), 4, workers=2)  # capped at one worker
    assert strip(pipelined) == strip(sequential)
