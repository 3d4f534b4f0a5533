"""OpenCV preprocessing: any frame → the model's input tensor, reproducing the torch transforms.

Contract: ``to_rgb_float(frame)`` turns uint8/uint16 GRAY, BGR or BGRA (H,W[,C]) into (H,W,3) float32
RGB in [0,255]; ``preprocess(frames, spec)`` resizes each (bilinear, half-pixel centres, no
antialias — the same as ``torch.nn.functional.interpolate(..., align_corners=False)``), scales to
[0,1], normalises with the artifact's mean/std and returns (N,3,H,W) float32.
"""

from __future__ import annotations

import cv2
import numpy as np

from ..artifact import InputSpec
from ..errors import InputError
from .imageio import read_image  # noqa: F401  (decoding lives in imageio: pixel budget, typed errors, OpenCV's log level)

_INTERPOLATION = {"bilinear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST, "bicubic": cv2.INTER_CUBIC}
_DEPTH_SCALE = {np.dtype(np.uint8): 1.0, np.dtype(np.uint16): 255.0 / 65535.0}


def to_rgb_float(frame: np.ndarray) -> np.ndarray:
    """(H,W), (H,W,1), (H,W,3) BGR or (H,W,4) BGRA, uint8 or uint16 → (H,W,3) float32 RGB in [0,255]."""
    if frame.dtype not in _DEPTH_SCALE:
        raise InputError(f"frame dtype {frame.dtype}: expected uint8 or uint16 pixels")
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[:, :, 0]
    channels = 1 if frame.ndim == 2 else frame.shape[2]
    if frame.ndim not in (2, 3) or channels not in (1, 3, 4) or min(frame.shape[:2]) < 1:
        raise InputError(f"frame shape {frame.shape}: expected (H,W) gray, (H,W,3) BGR or (H,W,4) BGRA")
    image = frame.astype(np.float32) * np.float32(_DEPTH_SCALE[frame.dtype])
    if channels == 1:
        return np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, 2::-1])  # BGR(A) → RGB, alpha dropped


def preprocess(frames: list[np.ndarray], spec: InputSpec) -> np.ndarray:
    """Frames (each as accepted by ``to_rgb_float``) → (N,3,H,W) float32 normalised batch.

    Gray frames are resized once and broadcast to the three channels (same values, a third of the work).
    """
    scale = 1.0 / (np.asarray(spec.std, np.float32) * 255.0)
    shift = -np.asarray(spec.mean, np.float32) / np.asarray(spec.std, np.float32)
    order = [2, 1, 0] if spec.color == "BGR" else [0, 1, 2]
    batch = np.empty((len(frames), 3, spec.height, spec.width), np.float32)
    for i, frame in enumerate(frames):
        plane = frame[:, :, 0] if frame.ndim == 3 and frame.shape[2] == 1 else frame
        if plane.ndim == 2 and plane.dtype in _DEPTH_SCALE:
            gray = _resize(plane.astype(np.float32) * np.float32(_DEPTH_SCALE[plane.dtype]), spec)
            for c in range(3):
                np.multiply(gray, scale[c], out=batch[i, c])
                batch[i, c] += shift[c]
            continue
        rgb = _resize(to_rgb_float(frame), spec)
        for c, src in enumerate(order):
            np.multiply(rgb[:, :, src], scale[c], out=batch[i, c])
            batch[i, c] += shift[c]
    return batch


def _resize(image: np.ndarray, spec: InputSpec) -> np.ndarray:
    if image.shape[:2] == (spec.height, spec.width):
        return image
    return cv2.resize(image, (spec.width, spec.height), interpolation=_INTERPOLATION[spec.interpolation])
