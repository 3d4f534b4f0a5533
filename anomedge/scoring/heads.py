"""Host scoring heads: a graph's outputs → (N,h,w) patch scores, with the fused kernels.

One table ``HEADS`` maps the artifact's ``scoring.kind`` to a head built from the artifact:
- ``knn``: output ``features`` (N,D,h,w), bank ``bank.npy`` (M,D) → mean distance to the k nearest
  bank rows (k from metadata), by the kNN kernel named in ``KNN_KERNELS``.
- ``mahalanobis``: output ``features`` (N,C,h,w), ``mean.npy`` (h·w,C), ``factor.npy`` (h·w,C,C) with
  L Lᵀ = Σ⁻¹ → sqrt of the squared Mahalanobis distance per position.
- ``reconstruction``: output ``error`` (N,1,h,w) or (N,h,w) is already the per-pixel score.
- ``ensemble``: several of the above over one graph pass (``scoring.ensemble``); that head also
  fuses the members' image scores and maps (its ``postprocess``).
``PassThroughHead`` is the head of placement ``graph``: the scoring ran inside the graph, its
``patch_scores`` (N,h,w) pass through (an ensemble's: ``scoring.ensemble.EnsembleGraphHead``; both
from ``make_graph_head``).
"""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np

from ..artifact import Artifact
from ..errors import ArtifactError
from .kernels import KnnIndex, MahalanobisIndex, OnnxKnnIndex
from .knn_exact import BlockedKnnIndex
from .knn_pruned import PrunedKnnIndex

KNN_GRAPH = "knn.onnx"
"""The chunked search graph of the ``onnxruntime`` kNN kernel, written at export (``export.writer``)."""

REEXPORT_HINT = ("add it on the workstation with: python -m anomedge.export.writer ARTIFACT "
                 "(or re-export with ad-export)")

log = logging.getLogger("anomedge")


def _numpy_kernel(bank: np.ndarray, k: int, graph) -> KnnIndex:
    return KnnIndex(bank)


def _onnx_kernel(bank: np.ndarray, k: int, graph) -> OnnxKnnIndex:
    if graph is None:
        raise ArtifactError(f"kNN kernel 'onnxruntime' needs {KNN_GRAPH} in the artifact; {REEXPORT_HINT}")
    return OnnxKnnIndex(bank, k, graph)


def _blocked_kernel(bank: np.ndarray, k: int, graph) -> BlockedKnnIndex:
    return BlockedKnnIndex(bank)


def _pruned_kernel(bank: np.ndarray, k: int, graph) -> PrunedKnnIndex:
    return PrunedKnnIndex(bank)


# Implementations of the same exact search, raced on the target (runtime.kernel_race):
# numpy blocks over OpenBLAS, the shipped chunked MatMul+TopK graph on onnxruntime's GEMM (MLAS), and the
# tie-exact kernels of knn_exact / knn_pruned (bit-identical winners to each other: float64 re-rank of
# the GEMM's candidates; "pruned" touches a fraction of the bank through PCA/cluster lower bounds).
# Each takes (bank (M,D), k, knn.onnx path | bytes | None).
KNN_KERNELS: dict[str, Callable[[np.ndarray, int, object], object]] = {
    "numpy": _numpy_kernel,
    "onnxruntime": _onnx_kernel,
    "blocked": _blocked_kernel,
    "pruned": _pruned_kernel,
}
NEEDS_GRAPH = frozenset({"onnxruntime"})
"""Kernels that need the artifact's ``knn.onnx`` (the others race without it)."""


def knn_graph(artifact: Artifact):
    """The path of the artifact's ``knn.onnx``, or None for artifacts exported before it was shipped."""
    return artifact.path(KNN_GRAPH) if artifact.has(KNN_GRAPH) else None


def _features(outputs: dict[str, np.ndarray]) -> np.ndarray:
    if "features" not in outputs:
        raise ArtifactError(f"graph outputs {sorted(outputs)}: expected 'features'; re-export the artifact")
    return outputs["features"]


class KnnHead:
    """``kernel``: a name in ``KNN_KERNELS``; None → the kernel recorded in metadata (``scoring.kernel``).
    An artifact without ``knn.onnx`` whose recorded kernel is onnxruntime runs the numpy kernel (the
    same exact distances) and logs one warning; asking for onnxruntime explicitly is an error."""

    def __init__(self, artifact: Artifact, kernel: str | None = None):
        self.k = int(artifact.metadata.scoring.get("k", 1))
        graph = knn_graph(artifact)
        chosen = kernel or artifact.metadata.scoring.get("kernel", "numpy")
        if chosen not in KNN_KERNELS:
            raise ArtifactError(f"kNN kernel '{chosen}': expected one of {', '.join(KNN_KERNELS)}")
        if kernel is None and chosen == "onnxruntime" and graph is None:
            log.warning("%s: recorded kNN kernel onnxruntime but no %s (exported before it was shipped); "
                        "using the numpy kernel (same exact distances); %s", artifact.root, KNN_GRAPH, REEXPORT_HINT)
            chosen = "numpy"
        self.kernel = chosen
        self.index = KNN_KERNELS[chosen](artifact.array("bank.npy"), self.k, graph)

    def __call__(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        feats = _features(outputs)
        n, d, h, w = feats.shape
        queries = np.ascontiguousarray(feats.transpose(0, 2, 3, 1).reshape(n * h * w, d), dtype=np.float32)
        dist = self.index.search(queries, self.k)
        return dist.mean(axis=1).reshape(n, h, w)


class MahalanobisHead:
    def __init__(self, artifact: Artifact, kernel: str | None = None):
        self.index = MahalanobisIndex(artifact.array("mean.npy"), artifact.array("factor.npy"))

    def __call__(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        feats = _features(outputs)
        n, c, h, w = feats.shape
        x = np.ascontiguousarray(feats.reshape(n, c, h * w).transpose(0, 2, 1), dtype=np.float32)
        return np.sqrt(np.maximum(self.index.score(x), 0.0)).reshape(n, h, w)


class ReconstructionHead:
    def __init__(self, artifact: Artifact, kernel: str | None = None):
        pass

    def __call__(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        if "error" not in outputs:
            raise ArtifactError(f"graph outputs {sorted(outputs)}: expected 'error'; re-export the artifact")
        error = outputs["error"]
        return error[:, 0] if error.ndim == 4 else error


class PassThroughHead:
    """Placement ``graph``: the scoring ran inside the graph (``scoring.graph``); ``patch_scores`` (N,h,w) pass through."""

    def __call__(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        if "patch_scores" not in outputs:
            raise ArtifactError(f"graph outputs {sorted(outputs)}: expected 'patch_scores'; run model.graph.onnx "
                                "(placement graph) or use placement host")
        return outputs["patch_scores"]


def _ensemble_head(artifact: Artifact, kernel: str | None = None):
    """``scoring.ensemble.EnsembleHead``: member heads over one graph pass; it brings its own ``postprocess``."""
    from .ensemble import EnsembleHead

    return EnsembleHead(artifact, kernel)


HEADS: dict[str, Callable[[Artifact, str | None], Callable[[dict[str, np.ndarray]], np.ndarray]]] = {
    "knn": KnnHead,
    "mahalanobis": MahalanobisHead,
    "reconstruction": ReconstructionHead,
    "ensemble": _ensemble_head,
}


def make_graph_head(artifact: Artifact) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    """The head of placement graph: the scores pass through (an ensemble's members', to be fused on the host)."""
    if artifact.metadata.scoring.get("kind") == "ensemble":
        from .ensemble import EnsembleGraphHead

        return EnsembleGraphHead(artifact)
    return PassThroughHead()


def make_head(artifact: Artifact, kernel: str | None = None) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    """The host head for the artifact's scoring kind; ``kernel`` overrides the recorded kNN kernel."""
    kind = artifact.metadata.scoring.get("kind")
    if kind not in HEADS:
        raise ArtifactError(f"{artifact.root}: scoring kind '{kind}' unknown; known: {', '.join(HEADS)}")
    return HEADS[kind](artifact, kernel)
