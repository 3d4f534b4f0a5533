"""Sources: video files through cv2.VideoCapture (the camera path), looping, a URL that never connects,
the hot folder (each file once across restarts, half-written files wait), ROI parsing/cropping and
the choice of source from CLI arguments."""

from __future__ import annotations

import json
import os
import socket
import time

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
