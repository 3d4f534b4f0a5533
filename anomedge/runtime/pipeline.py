"""The inspector: frames → scores, anomaly maps and OK/NG decisions, with per-stage timings.

``Inspector(artifact, backend="onnxruntime")`` builds the backend's stages once; ``inspect(frames)``
returns an ``Inspection`` for the batch; ``decision`` (``runtime.decision.Decision``) holds the
thresholds from metadata (or the ``threshold=`` override) and ``decide(score)`` applies it, failing
closed (OK only for a finite score under a finite threshold). Thresholds never live in the graph.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..artifact import Artifact
from ..errors import ArtifactError
from .decision import Decision
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
        self.decision = Decision.from_thresholds(artifact.metadata.thresholds, threshold,
                                                 where=f"{artifact.root}/metadata.json: ")
        self.artifact = artifact
        self.placement = placement
        self.backend = get_backend(backend)(artifact, device, **options)
        self.backend.open()
        self.stages = self.backend.stages()

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> "Inspector":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def threshold(self) -> float | None:
        return self.decision.threshold

    def decide(self, score: float) -> str:
        """'NG' if ``score`` exceeds the image threshold, 'OK' if not; 'ERROR' (or 'NG' under
        ``on_error="ng"``) for a non-finite score or no threshold."""
        return self.decision.label(score)[0]

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
