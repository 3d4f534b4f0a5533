"""Sources: video files through cv2.VideoCapture (the camera path), looping, a URL that never connects,
the hot folder (each file once across restarts, half-written files wait), ROI parsing/cropping and
the choice of source from CLI arguments."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from anomedge.errors import InputError, SourceError
from anomedge.runtime.sources import (CaptureSettings, FolderSource, VideoSource, WatchSource, crop_roi, open_source,
                                      parse_roi)


def write_video(path, n=12, size=(80, 60)):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, size)
    for i in range(n):
        frame = np.zeros((size[1], size[0], 3), np.uint8)
        frame[:, :, 1] = 20 * i  # frame number in the green level
        writer.write(frame)
    writer.release()
    return path


def test_video_file_yields_every_frame_in_order(tmp_path):
    video = write_video(tmp_path / "line.avi")
    source = open_source(str(video))
    assert isinstance(source, VideoSource) and not source.live
    frames = list(source)
    assert [f.index for f in frames] == list(range(12))
    assert frames[0].image.shape == (60, 80, 3) and frames[0].image.dtype == np.uint8
    np.testing.assert_allclose([np.median(f.image[:, :, 1]) for f in frames], [20 * i for i in range(12)], atol=3)


def test_video_loop_starts_again(tmp_path):
    video = write_video(tmp_path / "loop.avi", n=5)
    source = VideoSource(str(video), CaptureSettings(loop=True))
    frames = []
    for frame in source:
        frames.append(frame)
        if len(frames) == 13:
            break
    assert [f.index for f in frames] == list(range(13))
    np.testing.assert_allclose(np.median(frames[5].image[:, :, 1]), 0, atol=3)  # frame 0 again


def test_missing_video_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="no such video file"):
        VideoSource(str(tmp_path / "nope.avi"))


@pytest.mark.timeout(30)
def test_url_that_never_connects_fails_after_the_timeout():
    with socket.socket() as silent:  # accepts the TCP connection in the kernel, never answers HTTP
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        source = VideoSource(f"http://127.0.0.1:{port}/video", CaptureSettings(open_timeout_s=1.0))
        start = time.monotonic()
        with pytest.raises(SourceError, match=r"cannot open the stream within 1 s") as info:
            source.open()
        elapsed = time.monotonic() - start
    assert "\n" not in str(info.value)
    assert 0.5 < elapsed < 10


def test_folder_source_records_unreadable_files(tmp_path, elpv_paths):
    (tmp_path / "a.png").write_bytes(elpv_paths[0].read_bytes())
    (tmp_path / "b.png").write_bytes(b"garbage")
    frames = list(FolderSource(tmp_path))
    assert frames[0].image is not None and frames[1].image is None and "not a readable image" in frames[1].error


def test_watch_folder_each_file_once_across_restarts(tmp_path, elpv_paths):
    hot = tmp_path / "hot"
    hot.mkdir()
    for p in elpv_paths[:2]:
        (hot / p.name).write_bytes(p.read_bytes())
        os.utime(hot / p.name, (time.time() - 5, time.time() - 5))
    first = WatchSource(hot, poll_s=0.05, settle_s=0.2)
    seen = []
    for frame in first:
        seen.append(os.path.basename(frame.source))
        first.ack(frame)
        if len(seen) == 2:
            first.stop_event.set()
    first.close()
    assert seen == sorted(p.name for p in elpv_paths[:2])
    # a restart: old files are skipped; a new file is taken only once it has settled
    new = hot / elpv_paths[2].name
    new.write_bytes(elpv_paths[2].read_bytes())
    second = WatchSource(hot, poll_s=0.05, settle_s=0.2)
    start = time.monotonic()
    got = []
    for frame in second:
        got.append((os.path.basename(frame.source), time.monotonic() - start))
        second.ack(frame)
        second.stop_event.set()
    second.close()
    assert [name for name, _ in got] == [new.name]
    state = [json.loads(line)["name"] for line in (hot / ".anomedge-processed").read_text().splitlines()]
    assert state == seen + [new.name]


def test_watch_needs_a_folder(tmp_path):
    with pytest.raises(InputError, match="needs a folder"):
        WatchSource(tmp_path / "missing")


def test_open_source_dispatch(tmp_path, elpv_paths):
    video = write_video(tmp_path / "v.mp4.avi", n=2)
    assert isinstance(open_source(str(video)), VideoSource)
    assert isinstance(open_source(None, camera=3), VideoSource)
    assert open_source("rtsp://10.0.0.5/stream").live
    assert isinstance(open_source(str(elpv_paths[0])), FolderSource)
    with pytest.raises(InputError, match="exactly one"):
        open_source(None, None)


@pytest.mark.parametrize("text", ["1,2,3", "a,b,c,d", "0,0,0,5", "-1,0,4,4"])
def test_bad_roi_is_refused(text):
    with pytest.raises(InputError, match="--roi"):
        parse_roi(text)


def test_roi_crop_and_out_of_frame():
    image = np.arange(100 * 80, dtype=np.uint16).reshape(100, 80)
    crop = crop_roi(image, parse_roi("10,20,30,40"))
    assert crop.shape == (40, 30) and crop[0, 0] == image[20, 10]
    with pytest.raises(InputError, match="does not fit in the 80x100 frame"):
        crop_roi(image, (60, 0, 30, 10))


# --- trust: hot folders never lose or repeat a part; corrupt video frames ------------------------------------
def collect(source, count, timeout_s=20.0, record=None):
    """Iterate ``source`` (a WatchSource) on this thread until ``count`` frames came or the deadline;
    each frame is acked as a runner would (with an ERROR record for an error frame)."""
    import threading

    got = []
    timer = threading.Timer(timeout_s, source.stop_event.set)
    timer.start()
    try:
        for frame in source:
            got.append(frame)
            label = "ERROR" if frame.error else "OK"
            source.ack(frame, {"label": label, **({"error": frame.error} if frame.error else {})})
            if len(got) >= count:
                source.stop_event.set()
    finally:
        timer.cancel()
        source.close()
    return got


def state_names(path):
    """Names in a state file (a torn line, which a crash can leave, is skipped)."""
    names = []
    for line in path.read_text(errors="surrogateescape").splitlines():
        try:
            names.append(json.loads(line)["name"])
        except ValueError:
            pass
    return names


def test_watch_waits_for_a_slow_writer(tmp_path, elpv_paths):
    """A writer that appends a chunk every 0.15 s for ~1.5 s: the file is read once, complete."""
    import threading

    hot = tmp_path / "hot"
    hot.mkdir()
    data = elpv_paths[3].read_bytes()
    target = hot / "slow.png"

    def write_slowly():
        with open(target, "wb") as handle:
            for start in range(0, len(data), len(data) // 10 + 1):
                handle.write(data[start:start + len(data) // 10 + 1])
                handle.flush()
                time.sleep(0.15)

    writer = threading.Thread(target=write_slowly)
    writer.start()
    frames = collect(WatchSource(hot, poll_s=0.05, settle_s=0.5), 1)
    writer.join()
    assert len(frames) == 1 and frames[0].error is None
    np.testing.assert_array_equal(frames[0].image, cv2.imread(str(elpv_paths[3]), cv2.IMREAD_UNCHANGED))


def test_watch_retries_a_file_that_is_incomplete_once_settled(tmp_path, elpv_paths):
    """A writer that stalls longer than settle_s: the half file is retried (not an ERROR) and read whole."""
    import threading

    hot = tmp_path / "hot"
    hot.mkdir()
    data = elpv_paths[4].read_bytes()
    target = hot / "stall.png"
    target.write_bytes(data[: len(data) // 2])
    threading.Timer(0.6, lambda: target.write_bytes(data)).start()
    frames = collect(WatchSource(hot, poll_s=0.05, settle_s=0.1, retries=5, retry_s=0.2), 1)
    assert len(frames) == 1 and frames[0].error is None and frames[0].image.shape == (300, 300)


def test_watch_ignores_part_tmp_and_dotfiles_until_renamed(tmp_path, elpv_paths):
    import threading

    hot = tmp_path / "hot"
    hot.mkdir()
    for name in ("a.png.part", "b.png.tmp", ".c.png"):
        (hot / name).write_bytes(elpv_paths[5].read_bytes())
    threading.Timer(0.8, lambda: os.rename(hot / "a.png.part", hot / "a.png")).start()
    start = time.monotonic()
    frames = collect(WatchSource(hot, poll_s=0.05, settle_s=0.1), 1)
    assert [Path(f.source).name for f in frames] == ["a.png"] and time.monotonic() - start >= 0.8


def test_watch_state_holds_any_legal_name_and_failures_are_not_repeated(tmp_path, elpv_paths):
    hot = tmp_path / "hot"
    hot.mkdir()
    names = ["new\nline.png", "tab\tand ünïcode.png", "plain.png", "\udcff-undecodable.png"]
    for name in names:
        (hot / name).write_bytes(elpv_paths[6].read_bytes())
    os.mkfifo(hot / "fifo.png")  # a directory entry that cannot be read as a file (root reads mode 000)
    (hot / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    for entry in hot.iterdir():
        os.utime(entry, (time.time() - 5, time.time() - 5))
    first = collect(WatchSource(hot, poll_s=0.05, settle_s=0.05, retries=1, retry_s=0.05), 6)
    by_name = {Path(f.source).name: f for f in first}
    assert set(by_name) == set(names) | {"fifo.png", "broken.png"}
    assert "not a regular file (a FIFO)" in by_name["fifo.png"].error
    assert "not a readable image" in by_name["broken.png"].error and "after 1 retries" in by_name["broken.png"].error
    assert all(by_name[n].error is None for n in names)
    state = hot / ".anomedge-processed"
    assert sorted(state_names(state)) == sorted(by_name) and len(state.read_text().splitlines()) == 6
    # a restart repeats nothing, failures included; a torn last line is ignored and the next entry starts fresh
    with open(state, "a") as handle:
        handle.write('{"name": "torn')
    (hot / "later.png").write_bytes(elpv_paths[7].read_bytes())
    second = collect(WatchSource(hot, poll_s=0.05, settle_s=0.05), 2, timeout_s=2.0)
    assert [Path(f.source).name for f in second] == ["later.png"]
    assert state_names(state)[-1] == "later.png" and state.read_text().splitlines()[-2] == '{"name": "torn'


def test_watch_reads_an_old_plain_text_state_file(tmp_path, elpv_paths):
    hot = tmp_path / "hot"
    hot.mkdir()
    for p in elpv_paths[:2]:
        (hot / p.name).write_bytes(p.read_bytes())
    (hot / ".anomedge-processed").write_text(elpv_paths[0].name + "\n")
    frames = collect(WatchSource(hot, poll_s=0.05, settle_s=0.05), 2, timeout_s=2.0)
    assert [Path(f.source).name for f in frames] == [elpv_paths[1].name]


def corrupt_video(tmp_path, n=12, bad=(5,)):
    """An MJPG AVI whose frames ``bad`` have their JPEG bytes zeroed (the AVI index stays intact)."""
    path = write_video(tmp_path / "clean.avi", n=n)
    data = bytearray(path.read_bytes())
    starts = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]
    assert len(starts) == n
    for k in bad:
        data[starts[k]:starts[k] + 200] = bytes(200)
    out = tmp_path / "corrupt.avi"
    out.write_bytes(bytes(data))
    return out


def test_a_corrupt_video_frame_is_an_error_frame_and_reading_goes_on(tmp_path):
    frames = list(VideoSource(str(corrupt_video(tmp_path))))
    assert [f.index for f in frames] == list(range(12))
    assert [f.index for f in frames if f.error] == [5] and "does not decode" in frames[5].error
    # every other frame is there, in order (frame number in the green level)
    np.testing.assert_allclose([np.median(f.image[:, :, 1]) for f in frames if f.error is None],
                               [20 * i for i in range(12) if i != 5], atol=3)


def test_too_many_corrupt_frames_in_a_row_end_the_file(tmp_path):
    source = VideoSource(str(corrupt_video(tmp_path, bad=(3, 4, 5, 6, 7))), CaptureSettings(max_bad_frames=2))
    frames = list(source)
    assert [f.index for f in frames if f.error] == [3, 4] and len(frames) == 5
