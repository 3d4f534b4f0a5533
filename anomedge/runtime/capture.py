"""Capture thread and bounded frame queue; bounded exponential back-off for reconnects.

``CaptureThread(frames, policy="latest"|"all", maxsize=2)`` reads an iterable of ``Frame`` on a
background thread into a bounded queue, so that decoding overlaps inference:

- ``latest``: when the queue is full the oldest queued frame is dropped (live cameras: always
  inspect the freshest frame); ``dropped`` counts them.
- ``all``: the reader blocks until there is room (back-pressure: files, folders, every frame).

Iterating a ``CaptureThread`` yields the frames in order and ends when the source ends or
``stop()`` is called. An exception raised by the source is re-raised in the consumer.
``Backoff(initial_s, max_s)`` gives the delays 0.5, 1, 2, … capped at ``max_s``.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator

from .sources import Frame

POLICIES = ("latest", "all")
_END = object()


class Backoff:
    """Delays ``initial_s · 2**attempt`` capped at ``max_s``; ``reset()`` after a success."""

    def __init__(self, initial_s: float = 0.5, max_s: float = 30.0):
        self.initial_s = float(initial_s)
        self.max_s = max(float(max_s), 0.0)
        self.attempt = 0

    def next_delay(self) -> float:
        delay = min(self.initial_s * (2.0 ** self.attempt), self.max_s)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0


class CaptureThread:
    """Frames from ``frames`` read ahead on a daemon thread into a queue of ``maxsize`` frames."""

    def __init__(self, frames: Iterable[Frame], policy: str = "latest", maxsize: int = 2,
                 stop_event: threading.Event | None = None):
        if policy not in POLICIES:
            raise ValueError(f"policy '{policy}': expected one of {', '.join(POLICIES)}")
        self.frames = frames
        self.policy = policy
        self.queue: queue.Queue = queue.Queue(maxsize=max(1, int(maxsize)))
        self.stop_event = stop_event or threading.Event()
        self.dropped = 0
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, name="anomedge-capture", daemon=True)
        self._started = False

    # reader side -----------------------------------------------------------------------------------
    def _put(self, item: object) -> bool:
        """Queue ``item``; False if the run was stopped meanwhile."""
        if self.policy == "all" or item is _END:
            while not self.stop_event.is_set():
                try:
                    self.queue.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False
        with self._lock:
            while True:
                try:
                    self.queue.put_nowait(item)
                    return True
                except queue.Full:
                    self._drop_oldest()

    def _drop_oldest(self) -> None:
        try:
            self.queue.get_nowait()
            self.dropped += 1
        except queue.Empty:
            pass

    def _read(self) -> None:
        try:
            for frame in self.frames:
                if self.stop_event.is_set() or not self._put(frame):
                    break
        except BaseException as exc:  # handed to the consumer
            self._error = exc
        finally:
            self._put(_END)

    # consumer side ---------------------------------------------------------------------------------
    def start(self) -> "CaptureThread":
        if not self._started:
            self._started = True
            self._thread.start()
        return self

    def __iter__(self) -> Iterator[Frame]:
        self.start()
        while True:
            try:
                item = self.queue.get(timeout=0.1)
            except queue.Empty:
                if self.stop_event.is_set():
                    return
                continue
            if item is _END:
                if self._error is not None:
                    raise self._error
                return
            yield item  # type: ignore[misc]

    def stop(self, join_s: float = 2.0) -> None:
        """Ask the reader to stop and wait up to ``join_s`` for it (a blocked driver read may outlive it)."""
        self.stop_event.set()
        if self._started:
            self._thread.join(join_s)
