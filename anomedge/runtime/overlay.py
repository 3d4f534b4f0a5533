"""Heatmap overlays for people: anomaly map → JET colours blended on the frame (OpenCV, uint8 BGR)."""

from __future__ import annotations

import cv2
import numpy as np

from .preprocess import to_rgb_float


def overlay(frame: np.ndarray, anomaly_map: np.ndarray, low: float, high: float, alpha: float = 0.45) -> np.ndarray:
    """(H,W[,C]) frame + (h,w) map → (H,W,3) uint8 BGR; the map is scaled from [low, high] to the colour range."""
    rgb = to_rgb_float(frame)
    bgr = np.clip(rgb[:, :, ::-1], 0, 255).astype(np.uint8)
    scaled = np.clip((anomaly_map - low) / max(high - low, 1e-12), 0, 1)
    heat = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_JET)
    heat = cv2.resize(heat, (bgr.shape[1], bgr.shape[0]), interpolation=cv2.INTER_LINEAR)
    return cv2.addWeighted(heat, alpha, bgr, 1 - alpha, 0)
