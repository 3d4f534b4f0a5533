"""Latency and parity of runtime backends against the PyTorch reference (torch-free itself).

``score_frames(inspector, frames)`` → (scores (N,), maps (N,H,W)); ``latency(inspector, frames, runs,
warmup)`` → per-stage and end-to-end p50/p99 (batch 1); ``parity(ref, test, threshold)`` (from
``runtime.verify``) → max relative score difference, max normalised map difference, OK/NG agreement.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from .runtime.kernel_race import knn_head
from .runtime.pipeline import STAGE_NAMES, Inspector
from .runtime.verify import Parity, parity  # noqa: F401  (re-exported: callers compare with it)


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


def sgemm_rate(m: int = 2048, n: int = 2048, k: int = 2048, runs: int = 5) -> float:
    """GFLOP/s of numpy's float32 matmul (the BLAS numpy links) for (m,k)·(k,n) into a preallocated
    output, best of ``runs`` after one warm-up, at the process's current BLAS thread setting."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    out = np.empty((m, n), np.float32)
    _, best = timed(lambda: np.dot(a, b, out=out), runs)
    return 2.0 * m * n * k / (best * 1e6)


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


def kernel_race(bank: np.ndarray, queries: np.ndarray, runs: int = 20, graph=None) -> dict[str, float]:
    """Median ms of one (P,D) × bank k=1 search: the fused kernels and the tie-exact blocked / pruned ones
    vs faiss IndexFlatL2 (if installed). ``graph``: a k=1 ``knn.onnx`` (path or bytes); None builds one
    (needs onnx: workstation only)."""
    from .scoring.kernels import KnnIndex, OnnxKnnIndex
    from .scoring.knn_exact import BlockedKnnIndex
    from .scoring.knn_pruned import PrunedKnnIndex

    if graph is None:
        from .scoring.graph import build_knn_search

        graph = build_knn_search(bank, 1).SerializeToString()
    index, onnx_index = KnnIndex(bank), OnnxKnnIndex(bank, 1, graph)
    blocked, pruned = BlockedKnnIndex(bank), PrunedKnnIndex(bank)
    result = {"fused numpy": timed(lambda: index.search(queries, 1), runs)[0],
              "fused onnxruntime": timed(lambda: onnx_index.search(queries, 1), runs)[0],
              "blocked": timed(lambda: blocked.search(queries, 1), runs)[0],
              "pruned": timed(lambda: pruned.search(queries, 1), runs)[0]}
    try:
        import faiss
    except ImportError:
        return result
    flat = faiss.IndexFlatL2(bank.shape[1])
    flat.add(np.ascontiguousarray(bank, dtype=np.float32))
    result["faiss_flat"] = timed(lambda: flat.search(queries, 1), runs)[0]
    return result


def artifact_kernel_race(artifact, frame: np.ndarray, runs: int = 20) -> dict[str, float] | None:
    """For artifacts with a kNN head (``knn_head``): the kernels vs faiss on its bank with one frame's
    patches; the fastest host kernel's and the blocked kernel's GFLOP/s (2·P·M·D / median time) next to
    the machine's sgemm rate (``sgemm_rate``: 2048³, and a plain (P,D)·(D,M) sgemm of the search's own
    shape, the ceiling of any GEMM-based kernel). None for artifacts without a kNN head."""
    head = knn_head(artifact)
    if head is None:
        return None
    output, bank_file, graph_file, k = head
    with Inspector(artifact, "onnxruntime", placement="host") as inspector:
        feats = inspector.stages.infer(inspector.stages.preprocess([frame]))[output]
    queries = np.ascontiguousarray(feats.transpose(0, 2, 3, 1).reshape(-1, feats.shape[1]))
    bank = artifact.array(bank_file)
    shipped = artifact.path(graph_file) if artifact.has(graph_file) and k == 1 else None
    ms = kernel_race(bank, queries, runs, shipped)
    flops = 2.0 * len(queries) * bank.shape[0] * bank.shape[1]
    rate = {k: flops / (v * 1e6) for k, v in ms.items() if k != "faiss_flat"}  # host kernels' GFLOP/s
    best = max(rate, key=rate.get)
    square, same_shape = sgemm_rate(), sgemm_rate(len(queries), len(bank), bank.shape[1])
    return {"bank rows": len(bank), "queries": len(queries), **{f"{k} ms": v for k, v in ms.items()},
            "fastest host kernel": best, "its GFLOP/s": round(rate[best], 1),
            "blocked GFLOP/s": round(rate["blocked"], 1), "sgemm GFLOP/s": round(square, 1),
            "same-shape sgemm GFLOP/s": round(same_shape, 1), "fastest % of sgemm": round(100 * rate[best] / square)}


def fastest_knn_kernel(bank: np.ndarray, queries: int, k: int = 1, runs: int = 10) -> tuple[str, dict[str, float]]:
    """Race the host kNN kernels on random queries shaped like one frame's patches → (winner, ms by kernel).

    Run at fit time on the workstation (builds the kNN graph in memory, needs onnx); its winner is
    only the recorded default: the edge races again on its own CPU (``runtime.kernel_race``)."""
    from .scoring.graph import build_knn_search
    from .scoring.heads import KNN_KERNELS

    rng = np.random.default_rng(0)
    sample = bank[rng.integers(0, len(bank), queries)].astype(np.float32)
    q = sample + rng.normal(scale=float(sample.std()) * 0.1, size=sample.shape).astype(np.float32)
    graph = build_knn_search(bank, k).SerializeToString()
    times = {}
    for name, make in KNN_KERNELS.items():
        index = make(bank, k, graph)
        times[name] = timed(lambda: index.search(q, k), runs)[0]
    return min(times, key=times.get), times
