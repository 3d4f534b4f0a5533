"""Scoring heads: the graph's outputs → (N,h,w) patch scores, on the host with the fused kernels.

One table ``HEADS`` maps the artifact's ``scoring.kind`` to a head class built from the artifact:
- ``knn``: output ``features`` (N,D,h,w), bank ``bank.npy`` (M,D) → distance to the k-th nearest
  bank row (k from metadata, mean over the k nearest when k > 1).
- ``mahalanobis``: output ``features`` (N,C,h,w), ``mean.npy`` (h·w,C), ``factor.npy`` (h·w,C,C) with
  L Lᵀ = Σ⁻¹ → sqrt of the squared Mahalanobis distance per position.
- ``reconstruction``: output ``error`` (N,1,h,w) or (N,h,w) is already the per-pixel score.
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


class KnnHead:
    def __init__(self, artifact: Artifact):
        self.k = int(artifact.metadata.scoring.get("k", 1))
        self.index = KnnIndex(artifact.array("bank.npy"))

    def __call__(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        feats = _features(outputs)
        n, d, h, w = feats.shape
        queries = np.ascontiguousarray(feats.transpose(0, 2, 3, 1).reshape(n * h * w, d), dtype=np.float32)
        dist = self.index.search(queries, self.k)
        return dist.mean(axis=1).reshape(n, h, w)


class MahalanobisHead:
    def __init__(self, artifact: Artifact):
        self.index = MahalanobisIndex(artifact.array("mean.npy"), artifact.array("factor.npy"))

    def __call__(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        feats = _features(outputs)
        n, c, h, w = feats.shape
        x = np.ascontiguousarray(feats.reshape(n, c, h * w).transpose(0, 2, 1), dtype=np.float32)
        return np.sqrt(np.maximum(self.index.score(x), 0.0)).reshape(n, h, w)


class ReconstructionHead:
    def __init__(self, artifact: Artifact):
        pass

    def __call__(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        if "error" not in outputs:
            raise ArtifactError(f"graph outputs {sorted(outputs)}: expected 'error'; re-export the artifact")
        error = outputs["error"]
        return error[:, 0] if error.ndim == 4 else error


HEADS: dict[str, Callable[[Artifact], Callable[[dict[str, np.ndarray]], np.ndarray]]] = {
    "knn": KnnHead,
    "mahalanobis": MahalanobisHead,
    "reconstruction": ReconstructionHead,
}


def make_head(artifact: Artifact) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    kind = artifact.metadata.scoring.get("kind")
    if kind not in HEADS:
        raise ArtifactError(f"{artifact.root}: scoring kind '{kind}' unknown; known: {', '.join(HEADS)}")
    return HEADS[kind](artifact)
