"""The pipelined run loop (``ad-run --pipeline-depth N``): consecutive frames overlap, records stay in order.

Sequential (depth 0, ``Runner.run``): read frame i, compute it (ROI, preprocess, backbone, scoring,
postprocess), write its record, then frame i+1. Pipelined (depth N, 1..``MAX_DEPTH``):

- the source is read on the caller's thread (or the capture thread, which decodes ahead);
- ``Runner.compute`` (everything that depends on the frame alone) runs on ``budget.workers`` worker
  threads — onnxruntime and the BLAS kernel release the GIL, so two frames' backbones run at once;
- the record (decision, evidence, drift, sinks, ``on_done``) is made on the caller's thread in
  source order, from a FIFO of at most N computed-or-computing frames (+ the one being written).

Ordering guarantee: the records are the sequential loop's records in the same order — the same fields
and values except the timing fields (``ms``, ``evidence_ms``, ``timestamp``); a frame that fails (an
unreadable file, a corrupt video frame, an inspection error) gets its ERROR record at its place.
Stop (``stop_event``, Ctrl-C in ``ad-run``) or the end of the source reads no further frame and
drains: every frame already read gets its record, written whole, before the loop returns. A
``SinkError`` ends the loop at once (frames after the failed record have no record, as sequentially).
Memory is bounded: at most N + 1 frames (and their maps) are held. Backends that cannot run their
graph for two frames at once (OpenVINO's one infer request, TensorRT's buffers: all but
``CONCURRENT_BACKENDS``) get one worker that computes under the runner's lock (decode and the
records still overlap).

Thread budget (``ThreadBudget``): the cores this process may use (``os.sched_getaffinity``) are
shared out once: ``workers = min(N, cores)`` compute threads, each backbone / kNN session with
``intra_op = cores // workers`` threads, the BLAS pool (threadpoolctl) and OpenCV limited to the same,
onnxruntime's spinning off (``session.intra_op.allow_spinning`` 0, the backend default): idle threads
sleep instead of spinning against the other pools. Depth 0 keeps today's settings (one pool of all
cores). ``budget.applied()`` sets the BLAS / OpenCV limits for the run and restores them after.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from ..errors import InputError
from .runner import Computed, Runner, Summary
from .sinks import SinkError
from .sources import Frame

log = logging.getLogger("anomedge.pipelined")
MAX_DEPTH = 8
# Backends whose graph may run for two frames at once (onnxruntime's session.run is thread-safe); the
# others share one infer request / device buffers: one worker, computing under the runner's lock.
CONCURRENT_BACKENDS = ("onnxruntime",)


def concurrent(backend: str) -> bool:
    return backend in CONCURRENT_BACKENDS


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def check_depth(depth: int) -> int:
    """``depth`` as an int in 0..MAX_DEPTH; InputError otherwise."""
    if not isinstance(depth, int) or isinstance(depth, bool) or not 0 <= depth <= MAX_DEPTH:
        raise InputError(f"--pipeline-depth {depth!r}: expected an integer from 0 (sequential) to {MAX_DEPTH}")
    return depth


@dataclass(frozen=True)
class ThreadBudget:
    """How ``cores`` are shared: ``workers`` compute threads (0: sequential) × ``intra_op`` threads each
    (onnxruntime sessions, BLAS pool, OpenCV)."""

    cores: int
    workers: int
    intra_op: int

    @classmethod
    def plan(cls, depth: int, cores: int | None = None, threads: int | None = None,
             backend: str = "onnxruntime") -> "ThreadBudget":
        """The budget for pipeline ``depth`` on ``cores`` (default: this process's); ``threads`` (``--threads``)
        overrides the per-worker ``intra_op``; a ``backend`` not in ``CONCURRENT_BACKENDS`` gets one worker."""
        depth = check_depth(depth)
        cores = cores or available_cores()
        if threads is not None and threads < 1:
            raise InputError(f"--threads {threads}: expected at least 1")
        if depth == 0:
            return cls(cores, 0, threads or cores)
        workers = max(1, min(depth, cores)) if concurrent(backend) else 1
        return cls(cores, workers, threads or max(1, cores // workers))

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """BLAS pool and OpenCV limited to ``intra_op`` threads inside the block (restored after)."""
        import cv2

        previous = cv2.getNumThreads()
        cv2.setNumThreads(self.intra_op)
        with contextlib.ExitStack() as stack:
            try:
                from threadpoolctl import threadpool_limits
            except ImportError:  # not a runtime dependency: then numpy's BLAS keeps its own pool
                log.info("threadpoolctl is not installed: the BLAS pool is not limited to %d threads", self.intra_op)
            else:
                stack.enter_context(threadpool_limits(limits=self.intra_op, user_api="blas"))
            try:
                yield
            finally:
                cv2.setNumThreads(previous)

    def line(self) -> str:
        if not self.workers:
            return f"sequential: one frame at a time, {self.intra_op} threads ({self.cores} cores)"
        return f"pipelined: {self.workers} worker(s) × {self.intra_op} thread(s) on {self.cores} cores"


def fit_kernel_threads(inspector: Any, threads: int) -> None:
    """Give the onnxruntime kNN kernel (its own session) ``threads`` intra-op threads, as the backbone has;
    the numpy kernel follows the BLAS limit. Same graph, same bank: the same distances. (An ensemble's member
    kernels keep their own sessions.)"""
    from ..scoring.heads import knn_graph
    from ..scoring.kernels import OnnxKnnIndex

    head = getattr(inspector.stages, "score", None)
    index = getattr(head, "index", None)
    if isinstance(index, OnnxKnnIndex):
        head.index = OnnxKnnIndex(index.bank, index.k, knn_graph(inspector.artifact), threads=threads)


class _Slot:
    """One frame in flight: the frame, the ``dropped`` count when it was read, its compute future."""

    __slots__ = ("frame", "dropped", "future")

    def __init__(self, frame: Frame, dropped: int | None, future: Future):
        self.frame, self.dropped, self.future = frame, dropped, future


def run_pipelined(runner: Runner, frames: Iterable[Frame], depth: int, *, workers: int | None = None,
                  stop_event: threading.Event | None = None, max_frames: int | None = None,
                  on_done: Callable[[Frame, dict[str, Any]], None] | None = None,
                  dropped: Callable[[], int] | None = None, reconnects: Callable[[], int] | None = None) -> Summary:
    """``Runner.run`` with up to ``depth`` frames computing ahead on ``workers`` threads (default
    ``min(depth, cores)``); the same records in the same order (module docstring)."""
    depth = check_depth(depth)
    if depth == 0:
        return runner.run(frames, stop_event=stop_event, max_frames=max_frames, on_done=on_done, dropped=dropped,
                          reconnects=reconnects)
    compute = runner.compute
    name = getattr(runner.inspector.backend, "name", "")
    if not concurrent(name):
        workers = 1

        def compute(frame: Frame) -> Computed:  # one graph call at a time, the live view's included
            with runner.lock:
                return runner.compute(frame)
    workers = workers or ThreadBudget.plan(depth, backend=name).workers
    summary = runner.summary
    pending: collections.deque[_Slot] = collections.deque()

    def finish(slot: _Slot) -> None:
        computed: Computed = slot.future.result()
        if reconnects is not None:
            summary.reconnects = reconnects()
        record = runner.process_full(slot.frame, slot.dropped, computed)[0]
        if on_done is not None:
            try:
                on_done(slot.frame, record)
            except OSError as exc:
                raise SinkError(f"cannot mark {slot.frame.source} done ({exc.strerror or exc}); "
                                "check free space and permissions of the --watch-state file") from None

    read = 0
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="anomedge-compute") as pool:
        try:
            for frame in frames:
                if dropped is not None:
                    summary.dropped = dropped()
                pending.append(_Slot(frame, summary.dropped, pool.submit(compute, frame)))
                read += 1
                while len(pending) > depth:
                    finish(pending.popleft())
                if (max_frames is not None and read >= max_frames) or (stop_event is not None and stop_event.is_set()):
                    break
            while pending:  # drain: every frame read gets its record
                finish(pending.popleft())
        finally:
            for slot in pending:  # only after a SinkError / an exception: nothing more is written
                slot.future.cancel()
    if dropped is not None:
        summary.dropped = dropped()
    if reconnects is not None:
        summary.reconnects = reconnects()
    return summary
