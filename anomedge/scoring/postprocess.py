"""Patch scores → anomaly maps and image scores (host side, OpenCV + numpy; the graph head mirrors it).

``anomaly_maps(patch_scores (N,h,w), (H,W), sigma)`` → (N,H,W) float32: bilinear upsample (half-pixel
centres, as torch ``align_corners=False``) then a Gaussian blur with ``kernel_size(sigma)`` taps and
reflect-101 borders (torch ``padding_mode="reflect"``). ``image_scores(patch_scores, reduction)`` → (N,).
"""

from __future__ import annotations

from typing import Any, Callable

import cv2
import numpy as np

from ..errors import ArtifactError


def kernel_size(sigma: float) -> int:
    """Odd Gaussian support covering ±4σ; the torch reference uses the same."""
    return 2 * int(4.0 * sigma + 0.5) + 1


def gaussian_taps(sigma: float) -> np.ndarray:
    """The blur taps (odd support ±4σ) as float32 summing to 1: what the ONNX head's Conv uses."""
    size = kernel_size(sigma)
    x = np.arange(size, dtype=np.float64) - size // 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return (g / g.sum()).astype(np.float32)


def anomaly_maps(patch_scores: np.ndarray, size: tuple[int, int], sigma: float) -> np.ndarray:
    height, width = size
    maps = np.empty((patch_scores.shape[0], height, width), np.float32)
    ksize = kernel_size(sigma) if sigma > 0 else 0
    for i, scores in enumerate(patch_scores.astype(np.float32, copy=False)):
        up = cv2.resize(scores, (width, height), interpolation=cv2.INTER_LINEAR)
        if ksize:
            up = cv2.GaussianBlur(up, (ksize, ksize), sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101)
        maps[i] = up
    return maps


def _top_fraction_mean(flat: np.ndarray, fraction: float = 0.05) -> np.ndarray:
    count = max(1, int(round(flat.shape[1] * fraction)))
    top = np.partition(flat, flat.shape[1] - count, axis=1)[:, -count:]
    return top.mean(axis=1)


REDUCTIONS: dict[str, Callable[..., np.ndarray]] = {
    "max": lambda flat: flat.max(axis=1),
    "mean": lambda flat: flat.mean(axis=1),
    "top_fraction_mean": _top_fraction_mean,
}


def image_scores(patch_scores: np.ndarray, reduction: dict[str, Any]) -> np.ndarray:
    """(N,h,w) → (N,) float32 with ``reduction = {"name": "max"|"mean"|"top_fraction_mean", **params}``."""
    params = dict(reduction)
    name = params.pop("name")
    if name not in REDUCTIONS:
        raise ArtifactError(f"unknown image-score reduction '{name}'; known: {', '.join(REDUCTIONS)}")
    flat = patch_scores.reshape(patch_scores.shape[0], -1)
    return REDUCTIONS[name](flat, **params).astype(np.float32)
