"""The host kNN kernel race, run on the target and cached beside the artifact — never in its hashed files.

``choose_kernel(artifact, companion)`` → ``KernelChoice``: the cached winner for this CPU if the cache
entry still matches the artifact's bank and kNN graph (by their sha256) and the way it was raced, else a
fresh race of ``scoring.heads.KNN_KERNELS`` on queries shaped like one frame's patches, written to
``<artifact>/.cache/kernel-<cpu fingerprint>[-<backend>].json`` or, when the folder is read-only, to
``$XDG_CACHE_HOME/anomedge/<artifact sha256[:16]>/`` (default ``~/.cache``). An unwritable cache is
a warning, never an error: the race then runs at every load.

What is raced is one frame, not the search alone: with a ``companion`` (the backend's graph on one
frame, ``frame_companion``) every lap is companion + search, each kernel's laps in a block of their
own. A kernel's cost includes what it does to the backbone of the next frame: numpy's kernel runs on
OpenBLAS, whose idle workers spin for ≈ 0.1 s after a call, on the cores the backbone's own thread
pool needs next (2-core AMD EPYC Zen 3: backbone 10.9 → 16.0 ms after it, p50; unchanged after the
onnxruntime kernel, whose pool does not spin). Raced alone, numpy won there by 2 ms and cost 5.
The artifact's kNN head is a PatchCore artifact's own or an ensemble's first kNN member's (``knn_head``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..artifact import Artifact
from ..errors import ArtifactError
from ..scoring.heads import KNN_GRAPH, KNN_KERNELS, NEEDS_GRAPH

CACHE_DIR = ".cache"
RACE_RUNS = 8
"""Timed laps per kernel and pass."""
WARMUP_RUNS = 2
PASSES = 2
"""Kernels run in order, then in reverse order (a drifting host bills every kernel alike)."""
SETTLE_S = 0.15
"""Pause before each kernel's block of a frame race, so that the previous kernel's idle BLAS workers
have stopped spinning (OpenBLAS: ≈ 2²⁸ cycles after a call) and do not bill the next kernel."""
log = logging.getLogger("anomedge")


@dataclass
class KernelChoice:
    """kernel: the winner; how: "cached" | "raced" | "raced (no knn.onnx: host kernels only)"; ms: median ms by
    kernel of one frame's search (empty when not raced); cache: the file written or read (None if none)."""

    kernel: str
    how: str
    ms: dict[str, float] = field(default_factory=dict)
    cache: str | None = None


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_fingerprint() -> str:
    """12 hex digits naming what decides the race: CPU model, architecture, cores, numpy and onnxruntime versions."""
    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = "-"
    key = "|".join([cpu_name(), platform.machine(), str(os.cpu_count()), np.__version__, ort_version])
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def cache_candidates(artifact: Artifact, backend: str | None = None) -> list[Path]:
    """Where the race result may live, in order: beside the artifact, then the user cache dir; one
    file per way of racing (the search alone, or frames on ``backend``)."""
    name = f"kernel-{cpu_fingerprint()}{'-' + backend if backend else ''}.json"
    user = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "anomedge" / artifact.sha256[:16]
    return [artifact.root / CACHE_DIR / name, user / name]


def knn_head(artifact) -> tuple[str, str, str, int] | None:
    """The artifact's kNN head → (graph output it reads, bank file, kNN graph file, k): a PatchCore
    artifact's own, or an ensemble's first kNN member's (its prefixed files); None without one."""
    scoring = artifact.metadata.scoring
    if scoring.get("kind") == "knn":
        return "features", "bank.npy", KNN_GRAPH, int(scoring.get("k", 1))
    for member in scoring.get("members", []) if scoring.get("kind") == "ensemble" else []:
        if member["scoring"].get("kind") == "knn":
            pre = member["prefix"]
            return member["output"], f"{pre}bank.npy", f"{pre}{KNN_GRAPH}", int(member["scoring"].get("k", 1))
    return None


def frame_companion(backend, artifact: Artifact) -> Callable[[], Any]:
    """One frame of ``backend``'s work (an opened host-placement backend): its graph on a seeded noise
    frame of the artifact's input size (the backbone's cost does not depend on the pixels)."""
    from .preprocess import preprocess

    spec = artifact.metadata.input
    frame = np.random.default_rng(0).integers(0, 256, (spec.height, spec.width, 3), dtype=np.uint8)
    batch = preprocess([frame], spec)
    return lambda: backend.infer(batch)


def _head(artifact: Artifact) -> tuple[str, str, str, int]:
    head = knn_head(artifact)
    if head is None:
        raise ArtifactError(f"{artifact.root}: no kNN head (scoring kind '{artifact.metadata.scoring.get('kind')}'); "
                            "the kNN kernel race applies to PatchCore artifacts and ensembles with a kNN member")
    return head


def _identity(artifact: Artifact, raced: str) -> dict[str, object]:
    _, bank_file, graph_file, k = _head(artifact)
    files = artifact.metadata.files
    return {"bank": files.get(bank_file), "graph": files.get(graph_file), "k": k, "race": raced}


def race(artifact: Artifact, runs: int = RACE_RUNS, companion: Callable[[], Any] | None = None) -> dict[str, float]:
    """Median ms by kernel of one frame's search of the artifact's kNN bank (queries: bank rows + noise,
    as many as one frame's patches); with ``companion``, of companion + search (module docstring)."""
    output, bank_file, graph_file, k = _head(artifact)
    bank = artifact.array(bank_file)
    shape = artifact.metadata.outputs.get(output, {}).get("shape") or [1, 1, 1, 1]
    queries = max(1, int(shape[-1]) * int(shape[-2]))
    rng = np.random.default_rng(0)
    sample = bank[rng.integers(0, len(bank), queries)].astype(np.float32)
    q = sample + rng.normal(scale=float(sample.std()) * 0.1 + 1e-6, size=sample.shape).astype(np.float32)
    graph = artifact.path(graph_file) if artifact.has(graph_file) else None
    indexes = {name: make(bank, k, graph) for name, make in KNN_KERNELS.items()
               if graph is not None or name not in NEEDS_GRAPH}
    order = list(indexes)
    laps: dict[str, list[float]] = {name: [] for name in order}
    for blocks in range(PASSES):
        for i, name in enumerate(order if blocks % 2 == 0 else order[::-1]):
            if companion is not None and (blocks or i):
                time.sleep(SETTLE_S)
            for lap in range(WARMUP_RUNS + runs):
                start = time.perf_counter()
                if companion is not None:
                    companion()
                indexes[name].search(q, k)
                if lap >= WARMUP_RUNS:
                    laps[name].append((time.perf_counter() - start) * 1e3)
    return {name: float(np.median(laps[name])) for name in order}


def _read(path: Path, identity: dict[str, object]) -> dict | None:
    try:
        entry = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(entry, dict) and entry.get("identity") == identity and entry.get("kernel") in KNN_KERNELS
    return entry if ok else None


def _write(path: Path, entry: dict) -> bool:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".kernel.", dir=path.parent)
        with os.fdopen(fd, "w") as handle:
            json.dump(entry, handle, indent=2)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        return True
    except OSError:
        return False


def choose_kernel(artifact: Artifact, fresh: bool = False, companion: Callable[[], Any] | None = None,
                  backend: str | None = None) -> KernelChoice:
    """The host kNN kernel for this artifact on this machine (see the module docstring);
    ``fresh``: race again even if a cached winner exists. ``companion`` (``frame_companion``) and
    ``backend`` (its name): race whole frames on that backend; without them, the search alone. A
    winner cached by one way of racing is not reused by the other."""
    backend = (backend or "unnamed") if companion is not None else None
    identity = _identity(artifact, f"frame/{backend}" if backend else "search")
    candidates = cache_candidates(artifact, backend)
    if not fresh:
        for path in candidates:
            entry = _read(path, identity)
            if entry is not None:
                return KernelChoice(entry["kernel"], "cached", entry.get("ms", {}), str(path))
    ms = race(artifact, companion=companion)
    winner = min(ms, key=ms.get)
    has_graph = artifact.has(_head(artifact)[2])
    how = "raced" if has_graph else f"raced (no {KNN_GRAPH}: host kernels only)"
    entry = {"kernel": winner, "ms": {k: round(v, 4) for k, v in ms.items()}, "cpu": cpu_name(),
             "fingerprint": cpu_fingerprint(), "identity": identity,
             "raced": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    for path in candidates:
        if _write(path, entry):
            return KernelChoice(winner, how, entry["ms"], str(path))
    log.warning("kNN kernel race: no writable cache (%s); the race runs again at every load",
                ", ".join(str(p.parent) for p in candidates))
    return KernelChoice(winner, how, entry["ms"], None)


