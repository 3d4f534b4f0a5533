"""Heatmap overlays for people: anomaly map → JET colours blended on the frame (OpenCV, uint8 BGR);
the regions of an ignore mask dimmed and hatched (``hatch``)."""

from __future__ import annotations

import cv2
import numpy as np

from .preprocess import to_rgb_float


HATCH_SPACING, HATCH_GREY = 8, (200, 200, 200)


def hatch(image: np.ndarray, ignored: np.ndarray) -> np.ndarray:
    """(H,W,3) uint8 BGR with the ``ignored`` region ((h,w) bool at any resolution, resized nearest)
    dimmed to 40 % and hatched with grey diagonal lines every ``HATCH_SPACING`` pixels."""
    height, width = image.shape[:2]
    region = cv2.resize(ignored.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)
    yy, xx = np.indices((height, width))
    lines = region & ((xx + yy) % HATCH_SPACING < max(1, HATCH_SPACING // 4))
    out = image.copy()
    out[region] = (out[region] * 0.4).astype(np.uint8)
    out[lines] = HATCH_GREY
    return out


def overlay(frame: np.ndarray, anomaly_map: np.ndarray, low: float, high: float, alpha: float = 0.45,
            ignored: np.ndarray | None = None) -> np.ndarray:
    """(H,W[,C]) frame + (h,w) map → (H,W,3) uint8 BGR; the map is scaled from [low, high] to the colour
    range; ``ignored`` ((h,w) bool, the ignore mask) is shown hatched."""
    rgb = to_rgb_float(frame)
    bgr = np.clip(rgb[:, :, ::-1], 0, 255).astype(np.uint8)
    scaled = np.clip((anomaly_map - low) / max(high - low, 1e-12), 0, 1)
    heat = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_JET)
    heat = cv2.resize(heat, (bgr.shape[1], bgr.shape[0]), interpolation=cv2.INTER_LINEAR)
    blended = cv2.addWeighted(heat, alpha, bgr, 1 - alpha, 0)
    return blended if ignored is None else hatch(blended, ignored)
