"""Scoring heads: the graph's outputs → (N,h,w) patch scores, on the host with the fused kernels.

One table ``HEADS`` maps the artifact's ``scoring.kind`` to a head class built from the artifact:
- ``knn``: output ``features`` (N,D,h,w), bank ``bank.npy`` (M,D) → distance to the k-th nearest
  bank row (k from metadata, mean over the k nearest when k > 1).
- ``mahalanobis``: output ``features`` (N,C,h,w), ``mean.npy`` (h·w,C), ``factor.npy`` (h·w,C,C) with
  L Lᵀ = Σ⁻¹ → sqrt of the squared Mahalanobis distance per position.
- ``reconstruction``: output ``error`` (N,1,h,w) or (N,h,w) is already the per-pixel score.
- ``graph``: the scoring ran in the graph (placement graph); its ``patch_scores`` (N,h,w) pass through.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..artifact import Artifact
from ..errors import ArtifactError
from .scoring import KnnIndex, MahalanobisIndex


def _features(outputs: dict[str, np.ndarray]) -> np.ndarray:
    if "features" not in outputs:
        raise ArtifactError(f"graph outputs {sorted(outputs)}: expected 'features'; re-export the artifact")
    return outputs["features"]


def _onnx_knn(bank: np.ndarray, k: int):
    from .knn_onnx import OnnxKnnIndex

    return OnnxKnnIndex(bank, k)


# Two implementations of the same exact search, raced per artifact at export (scoring.kernel):
# numpy blocks over OpenBLAS, or a chunked MatMul+TopK graph on onnxruntime's own GEMM (MLAS).
KNN_KERNELS: dict[str, Callable[[np.ndarray, int], object]] = {
    "numpy": lambda bank, k: KnnIndex(bank),
    "onnxruntime": _onnx_knn,
}


class KnnHead:
    def __init__(self, artifact: Artifact, kernel: str | None = None):
        self.k = int(artifact.metadata.scoring.get("k", 1))
        kernel = kernel or artifact.metadata.scoring.get("kernel", "numpy")
        if kernel not in KNN_KERNELS:
            raise ArtifactError(f"kNN kernel '{kernel}': expected one of {', '.join(KNN_KERNELS)}")
        self.kernel = kernel
        self.index = KNN_KERNELS[kernel](artifact.array("bank.npy"), self.k)

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


class GraphHead:
    """Placement ``graph``: the scoring ran inside the graph (export.scoring_head); pass ``patch_scores`` (N,h,w) through."""

    def __init__(self, artifact: Artifact, kernel: str | None = None):
        pass

    def __call__(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        if "patch_scores" not in outputs:
            raise ArtifactError(f"graph outputs {sorted(outputs)}: expected 'patch_scores'; run model.graph.onnx "
                                "(placement graph) or use placement host")
        return outputs["patch_scores"]


HEADS: dict[str, Callable[[Artifact], Callable[[dict[str, np.ndarray]], np.ndarray]]] = {
    "knn": KnnHead,
    "mahalanobis": MahalanobisHead,
    "reconstruction": ReconstructionHead,
    "graph": GraphHead,
}


def make_head(artifact: Artifact, kernel: str | None = None) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    """The host head for the artifact's scoring kind; ``kernel`` overrides the recorded kNN kernel."""
    kind = artifact.metadata.scoring.get("kind")
    if kind not in HEADS:
        raise ArtifactError(f"{artifact.root}: scoring kind '{kind}' unknown; known: {', '.join(HEADS)}")
    return HEADS[kind](artifact, kernel)


def graph_view(artifact: Artifact) -> Artifact:
    """The artifact with scoring kind ``graph`` (pass-through head), for running its ``model.graph.onnx``."""
    import dataclasses

    meta = artifact.metadata
    if "graph_model" not in meta.scoring:
        raise ArtifactError(f"{artifact.root}: no graph placement; add it with ad-export … --placement graph "
                            "(or anomedge.export.scoring_head.add_graph_placement)")
    scoring = {**meta.scoring, "kind": "graph", "graph_of": meta.scoring.get("kind"), "placement": "graph"}
    view = Artifact(artifact.root, dataclasses.replace(meta, scoring=scoring))
    view._arrays = artifact._arrays
    return view
