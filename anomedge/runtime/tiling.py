"""Full-resolution tiled inspection: cut a large frame into model-sized tiles, stitch per-tile maps back.

Torch-free (numpy + OpenCV). Contract:

- ``TilingSpec(tile, overlap, blend, mode)``: square tiles of ``tile`` frame pixels overlapping by
  ``overlap`` pixels; ``blend`` ``linear`` (feathered weighted mean in the overlaps) or ``max``; ``mode``
  ``shared`` (one bank / statistics for every tile position). ``per_position`` (one model per grid
  position, fixtured parts) is refused for now.
- The grid is edge-aligned: along each axis the starts are ``0, s, 2s, …`` (stride ``s = tile −
  overlap``) and the last tile is flush with the frame edge (start ``length − tile``), so every pixel
  is covered and no tile is padded. A frame side shorter than ``tile`` is an InputError; a grid of more
  than ``MAX_TILES`` tiles is refused.
- ``cut(frame, spec)`` → (tiles (T,tile,tile[,C]), origins (T,2) int (y, x) of each tile's top-left).
- ``stitch(maps (T,h,w), origins, (H,W), spec)`` → (H,W) float32: each map resized to tile×tile
  (bilinear when h,w ≠ tile) and placed at its origin; ``linear``: Σ wᵢ·mᵢ / Σ wᵢ with ``weights``
  (separable ramp, > 0 everywhere, so a constant map stitches to the same constant); ``max``: pixel max.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np

from ..errors import InputError

MAX_TILES = 16384
MAX_TILE = 4096
BLENDS = ("linear", "max")
MODES = ("shared", "per_position")
SUPPORTED_MODES = ("shared",)


@dataclass(frozen=True)
class TilingSpec:
    """Tile side and overlap in frame pixels, the blend of overlaps, and how tiles share a model."""

    tile: int
    overlap: int = 0
    blend: str = "linear"
    mode: str = "shared"

    def __post_init__(self) -> None:
        if isinstance(self.tile, bool) or not isinstance(self.tile, int) or not 16 <= self.tile <= MAX_TILE:
            raise InputError(f"--tile {self.tile!r}: expected a whole number of pixels in [16, {MAX_TILE}], e.g. 224")
        if isinstance(self.overlap, bool) or not isinstance(self.overlap, int) or not 0 <= self.overlap <= self.tile // 2:
            raise InputError(f"--overlap {self.overlap!r}: expected a whole number of pixels in [0, tile/2 = "
                             f"{self.tile // 2}], e.g. 32")
        if self.blend not in BLENDS:
            raise InputError(f"--tile-blend {self.blend!r}: expected one of {', '.join(BLENDS)}")
        if self.mode not in MODES:
            raise InputError(f"--tile-mode {self.mode!r}: expected one of {', '.join(MODES)}")
        if self.mode not in SUPPORTED_MODES:
            raise InputError(f"--tile-mode {self.mode}: not supported yet (one model per tile position); use shared")

    @property
    def stride(self) -> int:
        return self.tile - self.overlap

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, block: dict[str, Any]) -> "TilingSpec":
        """From the artifact's ``tiling`` block (extra recorded keys such as ``n_fit_tiles`` are ignored)."""
        return cls(**{k: block[k] for k in ("tile", "overlap", "blend", "mode") if k in block})


def starts(length: int, tile: int, stride: int) -> np.ndarray:
    """Tile starts along one axis: 0, stride, … and the last one flush with the edge (``length − tile``)."""
    if length < tile:
        raise InputError(f"frame side {length} px is shorter than the tile ({tile} px); use a smaller --tile or "
                         "a larger frame")
    out = list(range(0, length - tile + 1, stride))
    if out[-1] != length - tile:
        out.append(length - tile)
    return np.asarray(out, np.int64)


def grid(height: int, width: int, spec: TilingSpec) -> np.ndarray:
    """(T,2) int64 (y, x) origins of the edge-aligned grid, row-major; InputError over ``MAX_TILES``."""
    ys, xs = starts(height, spec.tile, spec.stride), starts(width, spec.tile, spec.stride)
    if len(ys) * len(xs) > MAX_TILES:
        raise InputError(f"a {width}×{height} frame gives {len(ys) * len(xs)} tiles of {spec.tile} px, more than "
                         f"{MAX_TILES}; use a larger --tile or a smaller --overlap")
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([yy.ravel(), xx.ravel()], axis=1)


def crop(frame: np.ndarray, origins: np.ndarray, tile: int) -> list[np.ndarray]:
    """The tiles at ``origins`` as contiguous copies (a few at a time keeps memory bounded)."""
    return [np.ascontiguousarray(frame[y:y + tile, x:x + tile]) for y, x in origins]


def cut(frame: np.ndarray, spec: TilingSpec) -> tuple[np.ndarray, np.ndarray]:
    """(H,W[,C]) frame → (tiles (T,tile,tile[,C]) same dtype, origins (T,2) int64)."""
    if frame.ndim not in (2, 3):
        raise InputError(f"frame of shape {frame.shape}: expected (H,W) or (H,W,C)")
    origins = grid(frame.shape[0], frame.shape[1], spec)
    return np.stack(crop(frame, origins, spec.tile)), origins


def weights(tile: int, overlap: int) -> np.ndarray:
    """(tile,tile) float32 feathering weights: a separable ramp rising over ``overlap`` pixels from each
    side ((i + 0.5) / overlap, capped at 1); all ones without overlap. Strictly positive."""
    if overlap == 0:
        return np.ones((tile, tile), np.float32)
    i = np.arange(tile, dtype=np.float64) + 0.5
    ramp = np.minimum(1.0, np.minimum(i, tile - i) / overlap)
    return np.outer(ramp, ramp).astype(np.float32)


def _at_tile(tile_map: np.ndarray, tile: int) -> np.ndarray:
    tile_map = tile_map.astype(np.float32, copy=False)
    if tile_map.shape == (tile, tile):
        return tile_map
    return cv2.resize(tile_map, (tile, tile), interpolation=cv2.INTER_LINEAR)


class Stitcher:
    """Accumulates tile maps batch by batch into the (H,W) frame map: memory is two (H,W) float32
    planes, whatever the number of tiles. ``add(maps (B,h,w), origins (B,2))``; ``result()``."""

    def __init__(self, size: tuple[int, int], spec: TilingSpec):
        self.spec = spec
        height, width = size
        if spec.blend == "max":
            self.total, self.norm = np.full((height, width), -np.inf, np.float32), None
        else:
            self.total, self.norm = np.zeros((height, width), np.float32), np.zeros((height, width), np.float32)
            self.weights = weights(spec.tile, spec.overlap)

    def add(self, maps: np.ndarray, origins: np.ndarray) -> None:
        if len(maps) != len(origins):
            raise InputError(f"{len(maps)} tile maps for {len(origins)} tile origins")
        t = self.spec.tile
        for m, (y, x) in zip(maps, origins):
            m = _at_tile(m, t)
            if self.norm is None:
                np.maximum(self.total[y:y + t, x:x + t], m, out=self.total[y:y + t, x:x + t])
            else:
                self.total[y:y + t, x:x + t] += self.weights * m
                self.norm[y:y + t, x:x + t] += self.weights

    def result(self) -> np.ndarray:
        """(H,W) float32; pixels no tile covered are -inf (max) / NaN (linear): ``grid`` covers every pixel."""
        if self.norm is None:
            return self.total
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.total / self.norm


def stitch(maps: np.ndarray, origins: np.ndarray, size: tuple[int, int], spec: TilingSpec) -> np.ndarray:
    """(T,h,w) per-tile maps at ``origins`` → (H,W) float32 frame map, overlaps blended (module docstring)."""
    stitcher = Stitcher(size, spec)
    stitcher.add(maps, origins)
    return stitcher.result()
