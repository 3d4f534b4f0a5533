"""The inspector: frames → scores, anomaly maps and OK/NG decisions, with per-stage timings.

``Inspector(artifact, backend="onnxruntime")`` composes the pipeline once: OpenCV preprocess → the
backend (runs a graph: ``model.onnx`` / a precision variant for placement host, ``model.graph.onnx``
for placement graph) → the scoring head (host kernel, or pass-through when the graph scored) →
postprocess (maps, image score; under the artifact's ignore mask, ``scoring.mask``, when it has one).
The PyTorch reference brings its own torch stages. ``inspect(frames)``
returns an ``Inspection`` for the batch; ``decision`` (``runtime.decision.Decision``) holds the
thresholds from metadata (or the ``threshold=`` override) and ``decide(score)`` applies it, failing
closed (OK only for a finite score under a finite threshold). Thresholds never live in the graph.

A tiled artifact (``tiling`` block, ``runtime.tiling``) is inspected at full resolution: each frame is
cut into its edge-aligned grid of tiles, the tiles go through the same four stages in batches of at
most ``max_tile_batch`` (the memory bound), the per-tile maps are stitched into one (H,W) map at
frame resolution, and the image score is the max over the tile scores (each tile scored with the
artifact's own reduction, exactly as the fit and the golden frames saw it; a mean over the whole
frame would dilute a few-pixel defect by the number of tiles). ``inspect(..., tiled=False)`` runs a
frame as one model input (the golden frames: they prove the model, the cut / stitch are exact host
code tested against numpy). An ignore mask on a tiled artifact is at frame resolution (``scoring.mask.mask_size``):
each tile is postprocessed under its crop of it and the stitched map is zeroed on it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..artifact import Artifact
from ..errors import ArtifactError, InputError
from ..scoring.heads import make_graph_head, make_head
from ..scoring.mask import IgnoreMask, load_ignore_mask, masked_postprocess
from ..scoring.postprocess import anomaly_maps, image_scores
from .backends.base import Backend, Stages
from .decision import Decision, thresholds_for
from .kernel_race import choose_kernel, frame_companion, knn_head
from .preprocess import preprocess
from .registry import get_backend
from .tiling import TilingSpec

STAGE_NAMES = ("preprocess", "infer", "score", "postprocess")
PLACEMENTS = ("host", "graph")
MAX_TILE_BATCH = 4096


@dataclass
class Inspection:
    """One batch: ``scores`` (N,) float32 image scores, ``maps`` (N,H,W) float32 anomaly maps,
    ``timings_ms`` per stage for the whole batch."""

    scores: np.ndarray
    maps: np.ndarray
    timings_ms: dict[str, float]


def _as_numpy(value: Any) -> np.ndarray:
    return value if isinstance(value, np.ndarray) else value.detach().cpu().numpy()


def graph_file(artifact: Artifact, placement: str) -> str | None:
    """The graph a backend runs for ``placement``: None (host: the backend's own model / variant) or
    the recorded ``scoring.graph_model`` (graph: backbone + scoring head in one file)."""
    if placement not in PLACEMENTS:
        raise InputError(f"placement '{placement}': expected one of {', '.join(PLACEMENTS)}")
    if placement == "host":
        return None
    if "graph_model" not in artifact.metadata.scoring:
        raise ArtifactError(f"{artifact.root}: no graph placement; add it with ad-export … --placement graph "
                            "(or anomedge.export.writer.add_graph_placement)")
    return artifact.metadata.scoring["graph_model"]


def host_stages(artifact: Artifact, backend: Backend, placement: str, knn_kernel: str | None = None) -> Stages:
    """preprocess (OpenCV) → ``backend.infer`` → head → postprocess (OpenCV + numpy) for ``artifact``.

    Head: pass-through for placement graph, else the scoring kind's host head; for a kNN head (PatchCore,
    an ensemble's kNN member) the kernel is ``knn_kernel`` if given, else the winner of the race of whole
    frames on this backend and machine (``runtime.kernel_race``)."""
    meta = artifact.metadata
    if placement == "graph":
        head = make_graph_head(artifact)
    else:
        if knn_kernel is None and knn_head(artifact) is not None:
            knn_kernel = choose_kernel(artifact, companion=frame_companion(backend, artifact),
                                       backend=backend.name).kernel
        head = make_head(artifact, knn_kernel)
    post = meta.postprocess
    size = (meta.input.height, meta.input.width)

    def postprocess(patch_scores: np.ndarray, mask: IgnoreMask | None = None) -> tuple[np.ndarray, np.ndarray]:
        if mask is not None:
            return masked_postprocess(patch_scores, mask, size, post["blur_sigma"], post["reduction"])
        return image_scores(patch_scores, post["reduction"]), anomaly_maps(patch_scores, size, post["blur_sigma"])

    # a head that reduces and maps its own outputs (scoring.kind ensemble: per member, then fused)
    postprocess = getattr(head, "postprocess", postprocess)
    return Stages(lambda frames: preprocess(frames, meta.input), backend.infer, head, postprocess)


class Inspector:
    def __init__(self, artifact: Artifact, backend: str = "onnxruntime", device: str = "auto",
                 threshold: float | None = None, placement: str | None = None, knn_kernel: str | None = None,
                 max_tile_batch: int = 16, **options: Any):
        """``placement``: "host" (graph features + host kernel) or "graph" (scoring inside
        ``model.graph.onnx``); default: the artifact's ``scoring.placement``. ``knn_kernel``: override
        the host kNN kernel (default: raced on this machine, cached beside the artifact).
        ``max_tile_batch``: most tiles per backend call on a tiled artifact (1 for a fixed-batch graph).
        ``options`` go to the backend."""
        if isinstance(max_tile_batch, bool) or not isinstance(max_tile_batch, int) \
                or not 1 <= max_tile_batch <= MAX_TILE_BATCH:
            raise InputError(f"--max-tile-batch {max_tile_batch!r}: expected a whole number in [1, {MAX_TILE_BATCH}]")
        tiling = artifact.metadata.tiling
        self.tiling = TilingSpec.from_dict(tiling) if tiling else None
        self.max_tile_batch = max_tile_batch if artifact.metadata.input.dynamic_batch else 1
        placement = placement or artifact.metadata.scoring.get("placement", "host")
        graph = graph_file(artifact, placement)
        if graph is not None:
            options.setdefault("model_file", graph)
        self.decision = Decision.from_thresholds(thresholds_for(artifact.metadata.thresholds, options.get("precision")),
                                                 threshold, where=f"{artifact.root}/metadata.json: ")
        self.artifact = artifact
        self.placement = placement
        self.ignore_mask = load_ignore_mask(artifact)
        self.backend = get_backend(backend)(artifact, device, **options)
        self.backend.open()
        try:
            own = self.backend.stages()
            if own is not None and placement == "graph":
                raise InputError(f"backend '{backend}' scores on the host with its own stages; placement graph needs "
                                 "a graph backend (onnxruntime, openvino, tensorrt)")
            self.stages = own or host_stages(artifact, self.backend, placement, knn_kernel)
        except BaseException:
            self.backend.close()
            raise
        self.knn_kernel = getattr(self.stages.score, "kernel", None)

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

    def inspect(self, frames: list[np.ndarray], ignore_mask: bool = True, tiled: bool = True) -> Inspection:
        """``ignore_mask=False``: without the artifact's ignore mask (ad-verify: the golden frames were
        recorded without one). On a tiled artifact each frame is tiled (module docstring) unless
        ``tiled=False``; then ``maps`` is (N,H,W) at frame resolution (frames of one size per call)."""
        if self.tiling is not None and tiled:
            from .tiled import inspect_tiled

            results = [inspect_tiled(self, frame, self.ignore_mask if ignore_mask else None) for frame in frames]
            timings = {name: sum(r.timings_ms[name] for r in results) for name in STAGE_NAMES}
            return Inspection(np.concatenate([r.scores for r in results]), np.stack([r.maps[0] for r in results]),
                              timings)
        stages = self.stages
        mask = self.ignore_mask if ignore_mask else None
        timings: dict[str, float] = {}
        value: Any = frames
        for name in STAGE_NAMES:
            start = time.perf_counter()
            value = stages.postprocess(value, mask) if name == "postprocess" and mask is not None \
                else getattr(stages, name)(value)
            timings[name] = (time.perf_counter() - start) * 1e3
        scores, maps = value
        return Inspection(_as_numpy(scores).astype(np.float32), _as_numpy(maps).astype(np.float32), timings)
