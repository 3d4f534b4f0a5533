"""The inspector: frames → scores, anomaly maps and OK/NG decisions, with per-stage timings.

``Inspector(artifact, backend="onnxruntime")`` builds the backend's stages once; ``inspect(frames)``
returns an ``Inspection`` for the batch; ``decide(score)`` applies the threshold from metadata
(or the ``threshold=`` override). Thresholds never live in the graph.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..artifact import Artifact
from ..errors import ArtifactError
from .heads import graph_view
from .registry import get_backend

STAGE_NAMES = ("preprocess", "infer", "score", "postprocess")


@dataclass
class Inspection:
    """One batch: ``scores`` (N,) float32 image scores, ``maps`` (N,H,W) float32 anomaly maps,
    ``timings_ms`` per stage for the whole batch."""

    scores: np.ndarray
    maps: np.ndarray
    timings_ms: dict[str, float]


def _as_numpy(value: Any) -> np.ndarray:
    return value if isinstance(value, np.ndarray) else value.detach().cpu().numpy()


class Inspector:
    def __init__(self, artifact: Artifact, backend: str = "onnxruntime", device: str = "auto",
                 threshold: float | None = None, placement: str | None = None, **options: Any):
        """``placement``: "host" (graph features + host kernel) or "graph" (scoring inside
        ``model.graph.onnx``); default: the artifact's ``scoring.placement``."""
        placement = placement or artifact.metadata.scoring.get("placement", "host")
        if placement not in ("host", "graph"):
            raise ArtifactError(f"placement '{placement}': expected host or graph")
        if placement == "graph" and artifact.metadata.scoring.get("kind") != "graph":
            artifact = graph_view(artifact)
            options.setdefault("model_file", artifact.metadata.scoring["graph_model"])
        self.artifact = artifact
        self.placement = placement
        self.backend = get_backend(backend)(artifact, device, **options)
        self.backend.open()
        self.stages = self.backend.stages()
        self._threshold = threshold

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> "Inspector":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def threshold(self) -> float | None:
        if self._threshold is not None:
            return self._threshold
        value = self.artifact.metadata.thresholds.get("image")
        return None if value is None else float(value)

    def decide(self, score: float) -> str:
        """'NG' if ``score`` exceeds the image threshold, else 'OK'."""
        threshold = self.threshold
        if threshold is None:
            raise ArtifactError(f"{self.artifact.root}: no image threshold in metadata; run ad-calibrate or pass --threshold")
        return "NG" if score > threshold else "OK"

    def inspect(self, frames: list[np.ndarray]) -> Inspection:
        stages = self.stages
        timings: dict[str, float] = {}
        value: Any = frames
        for name in STAGE_NAMES:
            start = time.perf_counter()
            value = getattr(stages, name)(value)
            timings[name] = (time.perf_counter() - start) * 1e3
        scores, maps = value
        return Inspection(_as_numpy(scores).astype(np.float32), _as_numpy(maps).astype(np.float32), timings)
