"""The host kNN kernel race, run on the target and cached beside the artifact — never in its hashed files.

``choose_kernel(artifact)`` → ``KernelChoice``: the cached winner for this CPU if the cache entry
still matches the artifact's bank and ``knn.onnx`` (by their sha256), else a fresh race of
``scoring.heads.KNN_KERNELS`` on queries shaped like one frame's patches, written to
``<artifact>/.cache/kernel-<cpu fingerprint>.json`` or, when the folder is read-only, to
``$XDG_CACHE_HOME/anomedge/<artifact sha256[:16]>/`` (default ``~/.cache``). An unwritable cache is
a warning, never an error: the race then runs at every load.
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

import numpy as np

from ..artifact import Artifact
from ..scoring.heads import KNN_GRAPH, KNN_KERNELS, NEEDS_GRAPH, knn_graph

CACHE_DIR = ".cache"
RACE_RUNS = 7
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


def cache_candidates(artifact: Artifact) -> list[Path]:
    """Where the race result may live, in order: beside the artifact, then the user cache dir."""
    name = f"kernel-{cpu_fingerprint()}.json"
    user = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "anomedge" / artifact.sha256[:16]
    return [artifact.root / CACHE_DIR / name, user / name]


def _identity(artifact: Artifact) -> dict[str, object]:
    files = artifact.metadata.files
    return {"bank.npy": files.get("bank.npy"), KNN_GRAPH: files.get(KNN_GRAPH),
            "k": int(artifact.metadata.scoring.get("k", 1))}


def race(artifact: Artifact, runs: int = RACE_RUNS) -> dict[str, float]:
    """Median ms of each kNN kernel searching this artifact's bank with one frame's worth of queries."""
    bank = artifact.array("bank.npy")
    k = int(artifact.metadata.scoring.get("k", 1))
    shape = artifact.metadata.outputs.get("features", {}).get("shape") or [1, 1, 1, 1]
    queries = max(1, int(shape[-1]) * int(shape[-2]))
    rng = np.random.default_rng(0)
    sample = bank[rng.integers(0, len(bank), queries)].astype(np.float32)
    q = sample + rng.normal(scale=float(sample.std()) * 0.1 + 1e-6, size=sample.shape).astype(np.float32)
    graph = knn_graph(artifact)
    times = {}
    for name, make in KNN_KERNELS.items():
        if graph is None and name in NEEDS_GRAPH:
            continue
        index = make(bank, k, graph)
        index.search(q, k)
        laps = []
        for _ in range(runs):
            start = time.perf_counter()
            index.search(q, k)
            laps.append((time.perf_counter() - start) * 1e3)
        times[name] = float(np.median(laps))
    return times


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


def choose_kernel(artifact: Artifact, fresh: bool = False) -> KernelChoice:
    """The host kNN kernel for this artifact on this machine (see the module docstring);
    ``fresh``: race again even if a cached winner exists."""
    identity = _identity(artifact)
    candidates = cache_candidates(artifact)
    if not fresh:
        for path in candidates:
            entry = _read(path, identity)
            if entry is not None:
                return KernelChoice(entry["kernel"], "cached", entry.get("ms", {}), str(path))
    ms = race(artifact)
    winner = min(ms, key=ms.get)
    how = "raced" if knn_graph(artifact) is not None else f"raced (no {KNN_GRAPH}: host kernels only)"
    entry = {"kernel": winner, "ms": {k: round(v, 4) for k, v in ms.items()}, "cpu": cpu_name(),
             "fingerprint": cpu_fingerprint(), "identity": identity,
             "raced": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    for path in candidates:
        if _write(path, entry):
            return KernelChoice(winner, how, entry["ms"], str(path))
    log.warning("kNN kernel race: no writable cache (%s); the race runs again at every load",
                ", ".join(str(p.parent) for p in candidates))
    return KernelChoice(winner, how, entry["ms"], None)


