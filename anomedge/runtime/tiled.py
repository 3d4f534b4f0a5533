"""The tiled path of the Inspector (``runtime.pipeline``) on an artifact with a ``tiling`` block.

``inspect_tiled(inspector, frame, mask)`` → ``Inspection`` with scores (1,) and maps (1,H,W) at frame
resolution: the frame's edge-aligned grid (``runtime.tiling``) is cropped in batches of at most
``inspector.max_tile_batch`` tiles, each batch runs through the inspector's four stages (untiled), the
maps are stitched batch by batch, and the score is the max over the tile scores (NaN — so ERROR —
if any is not finite). With ``mask`` (the artifact's ignore mask at frame resolution) each tile is
postprocessed under its crop of the mask (``masked_tiles``) and the stitched map is zeroed on it.
"""

from __future__ import annotations

import time
from typing import Any

import cv2
import numpy as np

from ..errors import ArtifactError, InputError
from ..scoring.mask import IgnoreMask
from .pipeline import STAGE_NAMES, Inspection, Inspector, _as_numpy
from .tiling import Stitcher, crop, grid


def inspect_tiled(inspector: Inspector, frame: np.ndarray, mask: IgnoreMask | None) -> Inspection:
    """One frame → its tiles in batches of ``max_tile_batch`` → score (max over tiles), stitched map
    (1,H,W); stitching is timed as postprocess. ``mask`` (frame resolution): each tile scored under its
    crop of the mask (a tile with every patch cell ignored is left out of the score), the stitched map
    zeroed on every masked pixel."""
    if not isinstance(frame, np.ndarray) or frame.ndim not in (2, 3):
        raise InputError(f"frame of type {type(frame).__name__}: expected an (H,W) or (H,W,C) image array")
    if mask is not None and frame.shape[:2] != mask.pixels.shape:
        raise InputError(f"frame {frame.shape[1]}×{frame.shape[0]} px: this tiled artifact's ignore mask is "
                         f"{mask.pixels.shape[1]}×{mask.pixels.shape[0]} (the fit frames); inspect frames of that "
                         "size or ad-mask ARTIFACT --clear")
    spec = inspector.tiling
    origins = grid(frame.shape[0], frame.shape[1], spec)
    timings = dict.fromkeys(STAGE_NAMES, 0.0)
    scores, kept, stitcher = [], [], Stitcher(frame.shape[:2], spec)
    for start in range(0, len(origins), inspector.max_tile_batch):
        batch = origins[start:start + inspector.max_tile_batch]
        tiles = crop(frame, batch, spec.tile)
        if mask is None:
            part, keep = inspector.inspect(tiles, ignore_mask=False, tiled=False), np.ones(len(batch), bool)
        else:
            part, keep = masked_tiles(inspector, tiles, batch, mask)
        scores.append(part.scores)
        kept.append(keep)
        for name in STAGE_NAMES:
            timings[name] += part.timings_ms[name]
        begin = time.perf_counter()
        stitcher.add(part.maps, batch)
        timings["postprocess"] += (time.perf_counter() - begin) * 1e3
    full = stitcher.result()
    if mask is not None:
        full[mask.pixels] = 0.0
    tile_scores = np.concatenate(scores)[np.concatenate(kept)]
    ok = tile_scores.size and np.isfinite(tile_scores).all()
    score = np.float32(tile_scores.max()) if ok else np.float32(np.nan)  # fail closed
    return Inspection(np.array([score], np.float32), full[None], timings)


def masked_tiles(inspector: Inspector, tiles: list[np.ndarray], origins: np.ndarray,
             mask: IgnoreMask) -> tuple[Inspection, np.ndarray]:
    """A batch of tiles, each postprocessed under its crop of the frame-resolution ``mask`` (resized
    nearest to the model input) → (Inspection, kept (B,) bool: False where every patch cell is ignored)."""
    stages, spec, side = inspector.stages, inspector.artifact.metadata.input, inspector.tiling.tile
    timings: dict[str, float] = {}
    value: Any = tiles
    for name in STAGE_NAMES[:-1]:
        start = time.perf_counter()
        value = getattr(stages, name)(value)
        timings[name] = (time.perf_counter() - start) * 1e3
    start = time.perf_counter()
    scores = np.zeros(len(tiles), np.float32)
    maps = np.zeros((len(tiles), spec.height, spec.width), np.float32)
    kept = np.ones(len(tiles), bool)
    for i, (y, x) in enumerate(origins):
        sub = cv2.resize(mask.pixels[y:y + side, x:x + side].astype(np.uint8), (spec.width, spec.height),
                         interpolation=cv2.INTER_NEAREST).astype(bool)
        tile_mask = IgnoreMask(sub) if sub.any() else None
        if tile_mask is not None:
            try:
                tile_mask.keep(tuple(value.shape[1:]))
            except ArtifactError:  # every patch cell of this tile is ignored
                kept[i] = False
                continue
        s, m = (stages.postprocess(value[i:i + 1], tile_mask) if tile_mask is not None
                else stages.postprocess(value[i:i + 1]))
        scores[i], maps[i] = _as_numpy(s)[0], _as_numpy(m)[0]
    timings["postprocess"] = (time.perf_counter() - start) * 1e3
    return Inspection(scores, maps, timings), kept
