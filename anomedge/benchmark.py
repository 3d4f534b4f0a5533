"""Latency and parity of runtime backends against the PyTorch reference (torch-free itself).

``score_frames(inspector, frames)`` → (scores (N,), maps (N,H,W)); ``latency(inspector, frames, runs,
warmup)`` → per-stage and end-to-end p50/p99 (batch 1); ``parity(ref, test, threshold)`` → max
relative score difference, max normalised map difference, OK/NG agreement.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from .runtime.pipeline import STAGE_NAMES, Inspector


def timed(fn: Callable[[], object], runs: int, warmup: int = 1) -> tuple[float, float]:
    """(median, min) milliseconds of ``fn()`` over ``runs`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times)), float(np.min(times))


def score_frames(inspector: Inspector, frames: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Scores (N,) and anomaly maps (N,H,W), one frame at a time."""
    results = [inspector.inspect([f]) for f in frames]
    return np.concatenate([r.scores for r in results]), np.concatenate([r.maps for r in results])


def reference_and_runtime(artifact, frames: Sequence[np.ndarray], backend: str = "onnxruntime",
                          reference: str = "torch", **options: Any):
    """The same frames through the reference and a backend →
    (ref_scores (N,), ref_maps (N,H,W), scores (N,), maps (N,H,W), the backend's threshold)."""
    with Inspector(artifact, reference) as ref, Inspector(artifact, backend, **options) as run:
        ref_scores, ref_maps = score_frames(ref, frames)
        scores, maps = score_frames(run, frames)
        return ref_scores, ref_maps, scores, maps, run.threshold


@dataclass
class Latency:
    stages_p50: dict[str, float]
    total_p50: float
    total_p99: float
    runs: int

    @property
    def fps(self) -> float:
        return 1e3 / self.total_p50


def latency(inspector: Inspector, frames: Sequence[np.ndarray], runs: int = 100, warmup: int = 10) -> Latency:
    """Batch-1 latency over ``runs`` frames (cycling through ``frames``) after ``warmup`` frames."""
    for i in range(warmup):
        inspector.inspect([frames[i % len(frames)]])
    per_stage = {name: [] for name in STAGE_NAMES}
    totals = []
    for i in range(runs):
        start = time.perf_counter()
        result = inspector.inspect([frames[i % len(frames)]])
        totals.append((time.perf_counter() - start) * 1e3)
        for name, ms in result.timings_ms.items():
            per_stage[name].append(ms)
    return Latency({k: float(np.median(v)) for k, v in per_stage.items()}, float(np.median(totals)),
                   float(np.percentile(totals, 99)), runs)


@dataclass
class Parity:
    max_rel_score_diff: float
    max_map_diff: float  # max |Δmap| / (reference map range), over images
    decision_agreement: float
    n: int


def parity(ref_scores: np.ndarray, ref_maps: np.ndarray, scores: np.ndarray, maps: np.ndarray,
           threshold: float | None) -> Parity:
    rel = np.abs(scores - ref_scores) / np.maximum(np.abs(ref_scores), 1e-12)
    flat = ref_maps.reshape(len(ref_maps), -1)
    # relative to the map's range; a constant map (global detectors) falls back to 1e-6 of its level
    ranges = np.maximum(np.ptp(flat, axis=1), np.maximum(1e-6 * np.abs(flat).max(axis=1), 1e-12))
    map_diff = np.abs(maps - ref_maps).reshape(len(maps), -1).max(axis=1) / ranges
    agree = 1.0 if threshold is None else float(np.mean((scores > threshold) == (ref_scores > threshold)))
    return Parity(float(rel.max()), float(map_diff.max()), agree, len(scores))


@dataclass
class BackendReport:
    backend: str
    precision: str
    latency: Latency | None
    parity: Parity | None
    scores: np.ndarray | None
    error: str | None = None

    def row(self) -> dict[str, object]:
        row: dict[str, object] = {"backend": self.backend, "precision": self.precision}
        if self.error:
            return {**row, "note": self.error}
        lat = self.latency
        row.update({f"{k} ms": v for k, v in lat.stages_p50.items()})
        row.update({"p50 ms": lat.total_p50, "p99 ms": lat.total_p99, "FPS": lat.fps})
        if self.parity is not None:
            row.update({"max rel Δscore": self.parity.max_rel_score_diff, "max Δmap": self.parity.max_map_diff,
                        "agree": self.parity.decision_agreement})
        return row


def bench_backends(artifact, frames: Sequence[np.ndarray], backends: Sequence[str], reference: str = "torch",
                   runs: int = 100, warmup: int = 10, threads: int | None = 2, placements: Sequence[str] = ("host",),
                   options: dict[str, Any] | None = None,
                   on_entry: Callable[[str], None] | None = None) -> list[BackendReport]:
    """Latency of each backend (batch 1) and parity of its scores/maps on all ``frames`` vs ``reference``.

    A backend entry may name a precision variant: ``onnxruntime:fp16``, ``onnxruntime:int8``,
    ``openvino:bf16``. Each non-reference entry runs once per placement (host / graph scoring).
    The reference comes first in the result (``reference=None``: not run, no parity); a backend that
    cannot run here is reported with its reason. ``on_entry(label)`` is called before each entry runs.
    """
    from .errors import AnomedgeError

    runs_plan = ([(reference, "host")] if reference else []) + [(b, p) for b in backends if b != reference
                                                                 for p in placements]
    reports: list[BackendReport] = []
    ref_scores = ref_maps = None
    for entry, placement in runs_plan:
        name, _, precision = entry.partition(":")
        extra = {"precision": precision} if precision else {}
        label = name if placement == "host" else f"{name} [graph]"
        if on_entry is not None:
            on_entry(f"{label}{':' + precision if precision else ''}")
        try:
            with Inspector(artifact, name, threads=threads, placement=placement, **extra, **(options or {})) as inspector:
                scores, maps = score_frames(inspector, frames)
                lat = latency(inspector, frames, runs, warmup)
                precision = inspector.backend.precision
                threshold = inspector.threshold
        except AnomedgeError as exc:
            reports.append(BackendReport(label, precision or "-", None, None, None, error=str(exc)))
            continue
        par = None
        if entry == reference:
            ref_scores, ref_maps = scores, maps
        elif ref_scores is not None:
            par = parity(ref_scores, ref_maps, scores, maps, threshold)
        reports.append(BackendReport(label, precision, lat, par, scores))
    return reports


def kernel_race(bank: np.ndarray, queries: np.ndarray, runs: int = 20) -> dict[str, float]:
    """Median ms of one (P,D) × bank k=1 search: both fused kernels vs faiss IndexFlatL2 (if installed)."""
    from .runtime.scoring import KnnIndex

    from .runtime.knn_onnx import OnnxKnnIndex

    index, graph = KnnIndex(bank), OnnxKnnIndex(bank, 1)
    result = {"fused numpy": timed(lambda: index.search(queries, 1), runs)[0],
              "fused onnxruntime": timed(lambda: graph.search(queries, 1), runs)[0]}
    try:
        import faiss
    except ImportError:
        return result
    flat = faiss.IndexFlatL2(bank.shape[1])
    flat.add(np.ascontiguousarray(bank, dtype=np.float32))
    result["faiss_flat"] = timed(lambda: flat.search(queries, 1), runs)[0]
    return result


def artifact_kernel_race(artifact, frame: np.ndarray, runs: int = 20) -> dict[str, float] | None:
    """For kNN artifacts: the fused kernel vs faiss on this artifact's bank with one frame's patches."""
    if artifact.metadata.scoring.get("kind") != "knn":
        return None
    with Inspector(artifact, "onnxruntime", placement="host") as inspector:
        feats = inspector.stages.infer(inspector.stages.preprocess([frame]))["features"]
    queries = np.ascontiguousarray(feats.transpose(0, 2, 3, 1).reshape(-1, feats.shape[1]))
    bank = artifact.array("bank.npy")
    return {"bank rows": len(bank), "queries": len(queries),
            **{f"{k} ms": v for k, v in kernel_race(bank, queries, runs).items()}}


def fastest_knn_kernel(bank: np.ndarray, queries: int, k: int = 1, runs: int = 10) -> tuple[str, dict[str, float]]:
    """Race the host kNN kernels on random queries shaped like one frame's patches → (winner, ms by kernel)."""
    from .runtime.heads import KNN_KERNELS

    rng = np.random.default_rng(0)
    sample = bank[rng.integers(0, len(bank), queries)].astype(np.float32)
    q = sample + rng.normal(scale=float(sample.std()) * 0.1, size=sample.shape).astype(np.float32)
    times = {}
    for name, make in KNN_KERNELS.items():
        index = make(bank, k)
        times[name] = timed(lambda: index.search(q, k), runs)[0]
    return min(times, key=times.get), times
