"""Frame sources. Every source yields ``Frame`` records; a frame that cannot be read carries an
``error`` instead of an image, so the run records it and goes on.

- ``FolderSource(path)``: a folder, glob or .txt list of images, every file once, in order.
- ``WatchSource(folder, state_file)``: a hot folder; new images as they arrive (once written
  completely), each file once even across restarts (``ack(frame)`` appends it to the state file).
- ``VideoSource(target, settings)``: everything ``cv2.VideoCapture`` opens — a camera index, a video
  file, an ``rtsp://`` / ``http(s)://`` stream (MJPEG over HTTP). Live sources (camera, URL) that
  disconnect are reopened with bounded exponential back-off (``reconnects`` counts them) unless
  ``settings.exit_on_disconnect``; the first open fails with ``SourceError`` after
  ``settings.open_timeout_s``.
- ``open_source(...)`` picks one from the CLI arguments; ``crop_roi(image, roi)`` applies ``--roi``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from ..errors import InputError, SourceError
from .preprocess import read_image

log = logging.getLogger("anomedge.source")
# FFmpeg's own messages (stream timeouts, HTTP errors) would only add noise: disconnects are logged
# here and counted; set OPENCV_FFMPEG_LOGLEVEL yourself to see them. OpenCV reads it from 4.5.5 on;
# 4.5.4 (Ubuntu 22.04's) has no such switch and prints FFmpeg's errors: noise only, never a failure.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

VIDEO_SUFFIXES = (".avi", ".mp4", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".webm", ".wmv", ".flv", ".ts",
                  ".h264", ".h265", ".mjpg", ".mjpeg")
STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt")


@dataclass
class Frame:
    """One frame: ``image`` (H,W[,C]) uint8/uint16 as decoded, or None with ``error`` set."""

    source: str
    index: int
    timestamp: float
    image: np.ndarray | None = None
    error: str | None = None


class FolderSource:
    live = False

    def __init__(self, path: str | Path):
        from ..datasets.folder import list_images

        self.path = str(path)
        self.paths = list_images(path)

    def __len__(self) -> int:
        return len(self.paths)

    def __iter__(self) -> Iterator[Frame]:
        for index, path in enumerate(self.paths):
            stamp = time.time()
            try:
                yield Frame(str(path), index, stamp, image=read_image(path))
            except InputError as exc:
                yield Frame(str(path), index, stamp, error=str(exc))


class WatchSource:
    """New image files of ``folder`` in arrival order (mtime, name), polled every ``poll_s``.

    A file is taken once its size and mtime have not changed for ``settle_s`` (still being copied
    otherwise). ``ack(frame)`` marks it done in ``state_file`` (one name per line, appended, flushed);
    names listed there are never processed again. Runs until ``stop_event`` is set.
    """

    live = True

    def __init__(self, folder: str | Path, state_file: str | Path | None = None, poll_s: float = 0.5,
                 settle_s: float = 0.3, stop_event: threading.Event | None = None):
        from ..datasets.folder import IMAGE_SUFFIXES

        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise InputError(f"{folder}: --watch needs a folder; it does not exist or is not a folder")
        self.suffixes = IMAGE_SUFFIXES
        self.state_file = Path(state_file) if state_file else self.folder / ".anomedge-processed"
        self.poll_s, self.settle_s = poll_s, settle_s
        self.stop_event = stop_event or threading.Event()
        self.path = str(self.folder)
        try:
            self.done = set(self.state_file.read_text(encoding="utf-8").splitlines()) if self.state_file.exists() else set()
            self._state = open(self.state_file, "a", encoding="utf-8")
        except OSError as exc:
            raise InputError(f"{self.state_file}: cannot write the --watch state file ({exc.strerror}); "
                             "choose a writable --watch-state path") from exc
        self._pending: set[str] = set()

    def _ready(self) -> list[Path]:
        now = time.time()
        found = []
        for entry in os.scandir(self.folder):
            if not entry.is_file() or Path(entry.name).suffix.lower() not in self.suffixes:
                continue
            if entry.name in self.done or entry.name in self._pending:
                continue
            stat = entry.stat()
            if now - stat.st_mtime >= self.settle_s:
                found.append((stat.st_mtime, entry.name))
        return [self.folder / name for _, name in sorted(found)]

    def __iter__(self) -> Iterator[Frame]:
        index = 0
        while not self.stop_event.is_set():
            batch = self._ready()
            for path in batch:
                if self.stop_event.is_set():
                    return
                self._pending.add(path.name)
                stamp = time.time()
                try:
                    yield Frame(str(path), index, stamp, image=read_image(path))
                except InputError as exc:
                    yield Frame(str(path), index, stamp, error=str(exc))
                index += 1
            if not batch:
                self.stop_event.wait(self.poll_s)

    def ack(self, frame: Frame) -> None:
        """Record ``frame``'s file as processed (after its decision record was written)."""
        name = Path(frame.source).name
        self._pending.discard(name)
        if name not in self.done:
            self.done.add(name)
            self._state.write(name + "\n")
            self._state.flush()

    def close(self) -> None:
        self._state.close()


@dataclass
class CaptureSettings:
    """What users set on a camera / stream (None: leave the driver's value)."""

    width: int | None = None
    height: int | None = None
    fps: float | None = None
    exposure: float | None = None
    gain: float | None = None
    open_timeout_s: float = 10.0
    read_timeout_s: float = 5.0
    reconnect_max_s: float = 30.0
    reconnect_initial_s: float = 0.5
    exit_on_disconnect: bool = False
    loop: bool = False  # video files: start again at the end


_PROPERTIES = (("width", cv2.CAP_PROP_FRAME_WIDTH), ("height", cv2.CAP_PROP_FRAME_HEIGHT), ("fps", cv2.CAP_PROP_FPS),
               ("exposure", cv2.CAP_PROP_EXPOSURE), ("gain", cv2.CAP_PROP_GAIN))


def is_stream_url(text: str) -> bool:
    return "://" in text and text.split("://", 1)[0].lower() in STREAM_SCHEMES


class VideoSource:
    """Frames of ``cv2.VideoCapture(target)``: ``int`` camera index, video file path or stream URL."""

    def __init__(self, target: int | str, settings: CaptureSettings | None = None,
                 stop_event: threading.Event | None = None):
        self.target = target
        self.settings = settings or CaptureSettings()
        self.stop_event = stop_event or threading.Event()
        self.is_camera = isinstance(target, int)
        self.live = self.is_camera or is_stream_url(str(target))
        self.path = f"camera:{target}" if self.is_camera else str(target)
        self.reconnects = 0
        self.connected = False
        self.disconnected = False  # ended by a disconnect with exit_on_disconnect
        self.applied: dict[str, float] = {}
        self._cap: cv2.VideoCapture | None = None
        if not self.live and not Path(str(target)).is_file():
            raise InputError(f"{target}: no such video file")

    # opening ---------------------------------------------------------------------------------------
    def _create(self) -> cv2.VideoCapture:
        ms = int(self.settings.open_timeout_s * 1000)
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                  int(self.settings.read_timeout_s * 1000)]
        if self.is_camera:
            return cv2.VideoCapture(self.target, cv2.CAP_ANY, params)
        return cv2.VideoCapture(str(self.target), cv2.CAP_FFMPEG, params if self.live else [])

    def _try_open(self) -> cv2.VideoCapture | None:
        """Open within ``open_timeout_s`` (a driver that ignores its timeout is abandoned), or None."""
        box: list[cv2.VideoCapture] = []
        worker = threading.Thread(target=lambda: box.append(self._create()), daemon=True)
        worker.start()
        worker.join(self.settings.open_timeout_s + 1.0)
        if not box or not box[0].isOpened():
            return None
        cap = box[0]
        for name, prop in _PROPERTIES:
            value = getattr(self.settings, name)
            if value is None:
                continue
            if cap.set(prop, float(value)):
                self.applied[name] = float(cap.get(prop))
            else:
                log.warning("%s: the driver does not accept %s=%s; left as is", self.path, name, value)
        return cap

    def open(self) -> "VideoSource":
        """Open now; SourceError (one line) if that fails within the timeout."""
        if self._cap is None:
            self._cap = self._try_open()
            if self._cap is None:
                kind = "camera" if self.is_camera else "stream" if self.live else "video file"
                raise SourceError(f"{self.path}: cannot open the {kind} within {self.settings.open_timeout_s:g} s; "
                                  "check the device index / URL / file, or raise --open-timeout-s")
            self.connected = True
        return self

    # reading ---------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Frame]:
        from .capture import Backoff

        self.open()
        backoff = Backoff(self.settings.reconnect_initial_s, self.settings.reconnect_max_s)
        index = 0
        read_this_pass = 0
        try:
            while not self.stop_event.is_set():
                ok, image = self._cap.read() if self._cap is not None else (False, None)
                if ok and image is not None:
                    backoff.reset()
                    yield Frame(self.path, index, time.time(), image=image)
                    index += 1
                    read_this_pass += 1
                    continue
                self._release()
                if not self.live:
                    if not (self.settings.loop and read_this_pass):
                        return
                    read_this_pass = 0
                    self._cap = self._try_open()
                    continue
                self.connected = False
                if self.settings.exit_on_disconnect:
                    log.warning("%s: disconnected; exiting (--exit-on-disconnect)", self.path)
                    self.disconnected = True
                    return
                while not self.stop_event.is_set():
                    delay = backoff.next_delay()
                    log.warning("%s: disconnected; reconnecting in %.1f s", self.path, delay)
                    if self.stop_event.wait(delay):
                        return
                    self._cap = self._try_open()
                    if self._cap is not None:
                        self.reconnects += 1
                        self.connected = True
                        log.warning("%s: reconnected (%d reconnects so far)", self.path, self.reconnects)
                        break
        finally:
            self._release()

    def _release(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


def open_source(source: str | None = None, camera: int | None = None, *, watch: bool = False,
                state_file: str | Path | None = None, settings: CaptureSettings | None = None,
                stop_event: threading.Event | None = None) -> FolderSource | WatchSource | VideoSource:
    """The source for ``--camera N`` or ``--source``: a stream URL, a video file, a folder (``watch``:
    hot folder), a glob, a .txt list or one image."""
    if (source is None) == (camera is None):
        raise InputError("give exactly one of --camera N or --source PATH_OR_URL")
    if camera is not None:
        return VideoSource(int(camera), settings, stop_event)
    text = str(source)
    if is_stream_url(text):
        return VideoSource(text, settings, stop_event)
    if watch:
        return WatchSource(text, state_file, stop_event=stop_event)
    if Path(text).suffix.lower() in VIDEO_SUFFIXES and Path(text).is_file():
        return VideoSource(text, settings, stop_event)
    return FolderSource(text)


def parse_roi(text: str) -> tuple[int, int, int, int]:
    """``"x,y,w,h"`` → ints (w, h > 0, x, y >= 0); InputError otherwise."""
    try:
        x, y, w, h = (int(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"--roi '{text}': expected x,y,w,h as four integers, e.g. 10,20,200,150") from None
    if x < 0 or y < 0 or w <= 0 or h <= 0:
        raise InputError(f"--roi '{text}': expected x, y >= 0 and w, h > 0")
    return x, y, w, h


def crop_roi(image: np.ndarray, roi: tuple[int, int, int, int] | None) -> np.ndarray:
    """The ``roi`` (x, y, w, h) of ``image`` (a view); InputError if it does not lie inside the frame."""
    if roi is None:
        return image
    x, y, w, h = roi
    height, width = image.shape[:2]
    if x + w > width or y + h > height:
        raise InputError(f"roi {x},{y},{w},{h} does not fit in the {width}x{height} frame; fix --roi")
    return image[y:y + h, x:x + w]

