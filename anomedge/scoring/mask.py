"""Ignore masks: regions of the model input where anomalies are expected and harmless (numpy + OpenCV).

An artifact may hold ``ignore_mask_<sha12>.npy``: (H,W) uint8 at model resolution (a tiled artifact: at
frame resolution, ``mask_size``; runtime.pipeline applies it per tile and zeroes the stitched map), non-zero = ignore. It is listed
in ``files`` and named by ``postprocess.ignore_mask`` — both hashed contract blocks, so ``ad-mask`` writes
it through ``Artifact.edit`` (re-hash; a stale signature is removed with a warning) and a hand-swapped
mask is refused at load like any tampered file (docs/drift-and-masks.md says why it is contract).

``masked_postprocess(patch_scores (N,h,w), mask, (H,W), sigma, reduction)`` → (scores (N,), maps (N,H,W)):
- ``mask.keep((h,w))``: a patch cell is kept unless at least ``IGNORE_FRACTION`` of its area is masked
  (``cv2.INTER_AREA`` of the pixel mask onto the patch grid);
- image score = the artifact's reduction over the kept cells only (an ignored cell is not a zero that
  would dilute a mean: it is left out);
- map = ``anomaly_maps`` of the patch scores with the ignored cells zeroed (nothing bleeds out of the
  masked region through the upsample / blur), then zeroed on every masked pixel — boxes and pixel
  thresholds never see the region.
The PyTorch reference applies the same rule with torch ops (``runtime.backends.torch_ref``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from ..errors import ArtifactError, InputError
from .postprocess import REDUCTIONS, anomaly_maps

IGNORE_FRACTION = 0.5
MAX_POLYGONS, MAX_POINTS = 64, 1024


@dataclass
class IgnoreMask:
    """``pixels`` (H,W) bool, True = ignored; ``keep(grid)`` (h,w) bool, the kept patch cells (cached)."""

    pixels: np.ndarray
    _keep: dict[tuple[int, int], np.ndarray] = field(default_factory=dict, repr=False)

    def keep(self, grid: tuple[int, int]) -> np.ndarray:
        grid = (int(grid[0]), int(grid[1]))
        if grid not in self._keep:
            covered = cv2.resize(self.pixels.astype(np.float32), (grid[1], grid[0]), interpolation=cv2.INTER_AREA)
            keep = covered < IGNORE_FRACTION
            if not keep.any():
                raise ArtifactError(f"the ignore mask covers every one of the {grid[0]}×{grid[1]} patch cells; "
                                    "nothing would be inspected: ad-mask ARTIFACT --clear or draw a smaller mask")
            self._keep[grid] = keep
        return self._keep[grid]

    @property
    def fraction(self) -> float:
        return float(self.pixels.mean())


def mask_size(metadata: Any) -> tuple[int, int]:
    """(H,W) an ignore mask is drawn at: the model input, or for a tiled artifact (``runtime.tiling``) the
    frame size it was fitted on (``tiling.fit_frame_size``): there the mask applies at frame resolution."""
    tiling = getattr(metadata, "tiling", None)
    if not tiling:
        return metadata.input.height, metadata.input.width
    size = tiling.get("fit_frame_size")
    if not size:
        raise InputError("this tiled artifact was fitted on frames of different sizes, so an ignore mask has no "
                         "frame size to be drawn at; re-export it on frames of one size")
    return int(size[0]), int(size[1])


def check_mask(array: np.ndarray, size: tuple[int, int], where: str, error: type = InputError) -> np.ndarray:
    """A stored / given mask → (H,W) bool; one-line ``error`` for a wrong size, dtype, or a mask that
    ignores everything."""
    height, width = size
    if array.ndim != 2 or array.shape != (height, width):
        raise error(f"{where} is {'×'.join(map(str, array.shape[::-1]))} px, expected {width}×{height} "
                    "(the model input, or the frame for a tiled artifact); draw it at that size "
                    "(ad-mask --template writes one)")
    if array.dtype not in (np.uint8, np.bool_):
        raise error(f"{where} has dtype {array.dtype}, expected uint8 (0 = inspect, non-zero = ignore)")
    pixels = array.astype(bool)
    if pixels.all():
        raise error(f"{where} ignores every pixel; nothing would be inspected")
    return pixels


def load_ignore_mask(artifact: Any) -> IgnoreMask | None:
    """The artifact's ignore mask (checked against the input size), or None when it has none."""
    name = artifact.metadata.postprocess.get("ignore_mask")
    if name is None:
        return None
    return IgnoreMask(check_mask(artifact.array(name), mask_size(artifact.metadata), f"{artifact.root / name}",
                                 ArtifactError))


def masked_postprocess(patch_scores: np.ndarray, mask: IgnoreMask, size: tuple[int, int], sigma: float,
                       reduction: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(N,h,w) patch scores → (scores (N,) float32, maps (N,H,W) float32) under ``mask`` (module docstring)."""
    keep = mask.keep(patch_scores.shape[1:])
    params = dict(reduction)
    scores = REDUCTIONS[params.pop("name")](patch_scores[:, keep], **params).astype(np.float32)
    maps = anomaly_maps(np.where(keep, patch_scores, 0).astype(np.float32), size, sigma)
    maps[:, mask.pixels] = 0.0
    return scores, maps


def polygons_mask(text: str, size: tuple[int, int], where: str = "--polygons") -> np.ndarray:
    """JSON ``[[[x, y], ...], ...]`` (model pixels) → (H,W) uint8 mask, the polygons filled with 1."""
    try:
        polygons = json.loads(text)
    except ValueError as exc:
        raise InputError(f"{where}: not JSON ({exc}); expected [[[x, y], ...], ...] in model pixels") from None
    ok = (isinstance(polygons, list) and 0 < len(polygons) <= MAX_POLYGONS
          and all(isinstance(p, list) and 3 <= len(p) <= MAX_POINTS
                  and all(isinstance(q, list) and len(q) == 2 and all(isinstance(v, (int, float))
                                                                     and not isinstance(v, bool) and np.isfinite(v)
                                                                     for v in q) for q in p) for p in polygons))
    if not ok:
        raise InputError(f"{where}: expected 1 to {MAX_POLYGONS} polygons of 3 to {MAX_POINTS} [x, y] points "
                         "(finite numbers, model pixels), e.g. [[[0,0],[20,0],[20,10]]]")
    mask = np.zeros(size, np.uint8)
    cv2.fillPoly(mask, [np.round(np.asarray(p, np.float64)).astype(np.int32) for p in polygons], 1)
    return mask
