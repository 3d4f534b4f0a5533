"""Frame sources. Every source yields ``Frame`` records; a frame that cannot be read carries an
``error`` instead of an image, so the run records it and goes on.

- ``FolderSource(path, max_pixels)``: a folder, glob or .txt list of images, every file once, in order.
- ``WatchSource(folder, state_file, settle_s, retries)``: a hot folder; new images as they arrive
  (once written completely), each file once even across restarts (``ack(frame, record)`` appends it
  to the state file, failures included).
- ``VideoSource(target, settings)``: everything ``cv2.VideoCapture`` opens — a camera index, a video
  file, an ``rtsp://`` / ``http(s)://`` stream (MJPEG over HTTP). Live sources (camera, URL) that
  disconnect are reopened with bounded exponential back-off (``reconnects`` counts them) unless
  ``settings.exit_on_disconnect``; the first open fails with ``SourceError`` after
  ``settings.open_timeout_s``. In a video file a frame that does not decode is an error frame and
  reading goes on (at most ``settings.max_bad_frames`` in a row); the file ends when
  ``CAP_PROP_FRAME_COUNT`` frames (decoded or not) have been read, or, without a count, at the
  first frame that does not come.

Image files are read through ``imageio.read_image``: the header's pixel budget (``max_pixels``) is
checked before decoding, and every failure (over budget, permission denied, vanished, I/O error,
corrupt) is an error frame.
- ``open_source(...)`` picks one from the CLI arguments; ``crop_roi(image, roi)`` applies ``--roi``.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from ..errors import InputError, SourceError
from .imageio import DEFAULT_MAX_PIXELS, ImageError, decode_image, max_file_bytes, read_bytes, read_image

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

    def __init__(self, path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS):
        from ..datasets.folder import list_images

        self.path = str(path)
        self.paths = list_images(path)
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __iter__(self) -> Iterator[Frame]:
        for index, path in enumerate(self.paths):
            stamp = time.time()
            try:
                yield Frame(str(path), index, stamp, image=read_image(path, self.max_pixels))
            except InputError as exc:
                yield Frame(str(path), index, stamp, error=str(exc))


PARTIAL_SUFFIXES = (".part", ".tmp", ".partial", ".crdownload", ".filepart", ".download", "~")
EMPTY_SETTLE_FACTOR = 10  # an empty file may be a copy that has not started writing: wait longer


def looks_complete(data: bytes) -> bool:
    """False for a PNG without its IEND chunk or a JPEG without its end marker near the end (a copy
    still in progress); True for anything else (the decoder decides)."""
    tail = data[-4096:]
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return b"IEND" in tail
    if data[:2] == b"\xff\xd8":
        return b"\xff\xd9" in tail
    return True


def _read_state(path: Path) -> set[str]:
    """Names in a state file: JSON lines {"name": ...}; a line that is not a JSON object is a plain name
    (state files of older versions)."""
    done: set[str] = set()
    if not path.exists():
        return done
    for line in path.read_text(encoding="utf-8", errors="surrogateescape").split("\n"):
        if not line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        name = entry.get("name") if isinstance(entry, dict) else None
        done.add(name if isinstance(name, str) else line)
    return done


class WatchSource:
    """New image files of ``folder`` in arrival order (mtime, name), polled every ``poll_s``.

    - Settle: a file is taken once its size, mtime and inode stayed the same for ``settle_s`` seconds
      of polling (monotonic clock; an empty file ``EMPTY_SETTLE_FACTOR`` times longer). Names starting
      with "." or ending in ``PARTIAL_SUFFIXES`` (.part, .tmp, …) are ignored until renamed.
    - Retry: a transient failure (OS error, bytes that do not decode, a PNG/JPEG without its end) is
      tried again up to ``retries`` times after ``retry_s``, 2·``retry_s``, … (capped at 30 s), from
      scratch when the file changes meanwhile; then it is an error frame.
    - State: ``state_file`` holds one JSON line per done file, ``{"name": …, "label": …, "error": …}``
      (any legal name, a newline included); ``ack(frame, record)`` appends it after the record was
      written, failures too, so a restart neither repeats nor crash-loops on a file.
    Runs until ``stop_event`` is set.
    """

    live = True

    def __init__(self, folder: str | Path, state_file: str | Path | None = None, poll_s: float = 0.5,
                 settle_s: float = 1.0, stop_event: threading.Event | None = None, retries: int = 3,
                 retry_s: float = 0.5, max_pixels: int = DEFAULT_MAX_PIXELS):
        from ..datasets.folder import IMAGE_SUFFIXES

        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise InputError(f"{folder}: --watch needs a folder; it does not exist or is not a folder")
        if not settle_s >= 0 or not poll_s > 0 or retries < 0 or not retry_s >= 0:
            raise InputError(f"--settle-s {settle_s}, poll {poll_s} s, {retries} retries after {retry_s} s: "
                             "expected settle >= 0, poll > 0, retries >= 0")
        self.suffixes = IMAGE_SUFFIXES
        self.state_file = Path(state_file) if state_file else self.folder / ".anomedge-processed"
        self.poll_s, self.settle_s, self.retries, self.retry_s = poll_s, settle_s, int(retries), retry_s
        self.max_pixels = max_pixels
        self.stop_event = stop_event or threading.Event()
        self.path = str(self.folder)
        try:
            self.done = _read_state(self.state_file)
            self._state = os.open(self.state_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0),
                                  0o644)
            size = os.fstat(self._state).st_size
            if size and self.state_file.read_bytes()[-1:] != b"\n":  # a torn last line: start a fresh one
                os.write(self._state, b"\n")
        except OSError as exc:
            raise InputError(f"{self.state_file}: cannot write the --watch state file ({exc.strerror}); "
                             "choose a writable --watch-state path") from exc
        self._pending: set[str] = set()
        self._seen: dict[str, tuple[tuple[int, int, int], float]] = {}  # name → (size, mtime, inode), stable since
        self._retry: dict[str, tuple[int, float]] = {}  # name → (attempts so far, not before)

    def _wanted(self, name: str) -> bool:
        lower = name.lower()
        return (not name.startswith(".") and not lower.endswith(PARTIAL_SUFFIXES)
                and Path(lower).suffix in self.suffixes and name not in self.done and name not in self._pending)

    def _ready(self) -> list[str]:
        """Names that have settled (and whose retry time has come), oldest first."""
        now = time.monotonic()
        found, present = [], set()
        try:
            entries = list(os.scandir(self.folder))
        except OSError as exc:
            log.warning("%s: cannot list the hot folder (%s); trying again", self.folder, exc.strerror or exc)
            return []
        for entry in entries:
            if not self._wanted(entry.name):
                continue
            try:
                info = entry.stat()
            except OSError:  # vanished meanwhile
                continue
            if stat.S_ISDIR(info.st_mode):
                continue
            present.add(entry.name)
            key = (info.st_size, info.st_mtime_ns, info.st_ino)
            seen = self._seen.get(entry.name)
            if seen is None or seen[0] != key:
                if seen is not None and entry.name in self._retry:  # it changed: a writer is still at it
                    self._retry.pop(entry.name)
                self._seen[entry.name] = (key, now)
                continue
            wait = self.settle_s * (EMPTY_SETTLE_FACTOR if info.st_size == 0 else 1)
            if now - seen[1] < wait or now < self._retry.get(entry.name, (0, 0.0))[1]:
                continue
            found.append((info.st_mtime_ns, entry.name))
        for name in set(self._seen) - present:
            self._seen.pop(name, None)
            self._retry.pop(name, None)
        return [name for _, name in sorted(found)]

    def _read(self, name: str, index: int) -> Frame | None:
        """The frame of ``name``, an error frame, or None when it is to be tried again later."""
        path = self.folder / name
        stamp = time.time()
        attempts = self._retry.get(name, (0, 0.0))[0]
        try:
            data = read_bytes(path, max_file_bytes(self.max_pixels))
            if attempts < self.retries and not looks_complete(data):
                raise ImageError(f"{path}: incomplete (no end marker yet)", transient=True)
            return Frame(str(path), index, stamp, image=decode_image(data, str(path), self.max_pixels))
        except ImageError as exc:
            if exc.transient and attempts < self.retries:
                delay = min(self.retry_s * 2 ** attempts, 30.0)
                self._retry[name] = (attempts + 1, time.monotonic() + delay)
                log.info("%s: %s; retry %d of %d in %.1f s", path, exc, attempts + 1, self.retries, delay)
                return None
            suffix = f" (after {attempts} retries)" if attempts else ""
            return Frame(str(path), index, stamp, error=f"{exc}{suffix}")

    def __iter__(self) -> Iterator[Frame]:
        index = 0
        while not self.stop_event.is_set():
            batch = self._ready()
            taken = 0
            for name in batch:
                if self.stop_event.is_set():
                    return
                frame = self._read(name, index)
                if frame is None:
                    continue
                self._pending.add(name)
                self._retry.pop(name, None)
                self._seen.pop(name, None)
                taken += 1
                yield frame
                index += 1
            if not taken:
                self.stop_event.wait(self.poll_s)

    def ack(self, frame: Frame, record: dict | None = None) -> None:
        """Record ``frame``'s file as done (after its decision record was written), with its label and
        error; OSError when the state file cannot be written."""
        name = Path(frame.source).name
        self._pending.discard(name)
        if name in self.done:
            return
        entry = {"name": name}
        if record is not None:
            entry["label"] = record.get("label")
            if record.get("error"):
                entry["error"] = str(record["error"])[:500]
        line = (json.dumps(entry, ensure_ascii=True) + "\n").encode("ascii")
        written = os.write(self._state, line)
        if written != len(line):
            raise OSError(28, f"short write to {self.state_file}")
        self.done.add(name)

    def close(self) -> None:
        if self._state is not None:
            os.close(self._state)
            self._state = None


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
    max_bad_frames: int = 25  # video files: this many undecodable frames in a row end the file


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
        read_this_pass = 0  # frames of this pass through a file, decoded or not
        bad_in_a_row = good_this_pass = 0
        try:
            while not self.stop_event.is_set():
                ok, image = self._cap.read() if self._cap is not None else (False, None)
                if ok and image is not None:
                    backoff.reset()
                    bad_in_a_row = 0
                    yield Frame(self.path, index, time.time(), image=image)
                    index += 1
                    read_this_pass += 1
                    good_this_pass += 1
                    continue
                if not self.live and self._cap is not None and self._more_frames(read_this_pass, bad_in_a_row):
                    bad_in_a_row += 1
                    yield Frame(self.path, index, time.time(),
                                error=f"{self.path}: frame {read_this_pass} of "
                                      f"{int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT))} does not decode (corrupt)")
                    index += 1
                    read_this_pass += 1
                    continue
                if bad_in_a_row >= self.settings.max_bad_frames:
                    log.warning("%s: %d frames in a row do not decode; giving up on the rest of the file",
                                self.path, bad_in_a_row)
                self._release()
                if not self.live:
                    if not (self.settings.loop and good_this_pass):
                        return
                    read_this_pass = bad_in_a_row = good_this_pass = 0
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

    def _more_frames(self, read_this_pass: int, bad_in_a_row: int) -> bool:
        """A failed read of a file that has frames left (by its frame count) is a corrupt frame, not the end."""
        count = self._cap.get(cv2.CAP_PROP_FRAME_COUNT)
        return count > 0 and read_this_pass < count and bad_in_a_row < self.settings.max_bad_frames

    def _release(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


def open_source(source: str | None = None, camera: int | None = None, *, watch: bool = False,
                state_file: str | Path | None = None, settings: CaptureSettings | None = None,
                stop_event: threading.Event | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                settle_s: float = 1.0, retries: int = 3) -> FolderSource | WatchSource | VideoSource:
    """The source for ``--camera N`` or ``--source``: a stream URL, a video file, a folder (``watch``:
    hot folder, with ``settle_s`` / ``retries``), a glob, a .txt list or one image (``max_pixels``)."""
    if (source is None) == (camera is None):
        raise InputError("give exactly one of --camera N or --source PATH_OR_URL")
    if camera is not None:
        return VideoSource(int(camera), settings, stop_event)
    text = str(source)
    if is_stream_url(text):
        return VideoSource(text, settings, stop_event)
    if watch:
        return WatchSource(text, state_file, settle_s=settle_s, stop_event=stop_event, retries=retries,
                           max_pixels=max_pixels)
    if Path(text).suffix.lower() in VIDEO_SUFFIXES and Path(text).is_file():
        return VideoSource(text, settings, stop_event)
    return FolderSource(text, max_pixels)


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

