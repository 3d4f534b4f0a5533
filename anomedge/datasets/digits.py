"""A tiny one-class data set from scikit-learn's bundled 8×8 digits (1,797 images, no download).

Protocol: ``anomaly_digit`` is the anomaly class, every other digit is "good".
- train/good  = 80 % of the good images (``default_rng(seed).permutation``),
- test/good   = the other 20 %,
- test/anomaly = ALL images of ``anomaly_digit`` (about 180).
Images are the 0..16 counts upsampled to ``size``×``size`` with ``cv2.INTER_CUBIC``, scaled ×255/16,
clipped and rounded to uint8 grayscale PNGs, in MVTec layout (no masks). The folder is written once and
reused (see ``cache.build_once``); file names are ``<index in load_digits>.png``.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..errors import InputError
from .cache import build_once, write_png
from .folder import load_mvtec
from .split import Split

TRAIN_FRACTION = 0.8


def render_digit(pixels: np.ndarray, size: int) -> np.ndarray:
    """(8, 8) float counts 0..16 → (size, size) uint8 grayscale."""
    up = cv2.resize(pixels.astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    return np.clip(np.rint(up * (255.0 / 16.0)), 0, 255).astype(np.uint8)


def make_digits(out_dir: str | Path, anomaly_digit: int = 7, size: int = 32, seed: int = 0) -> Split:
    if isinstance(anomaly_digit, bool) or anomaly_digit not in range(10):
        raise InputError(f"digits: anomaly digit {anomaly_digit!r}: expected an integer 0..9")
    if not 8 <= int(size) <= 1024:
        raise InputError(f"digits: size {size}: expected 8..1024 pixels")
    from sklearn.datasets import load_digits

    params = {"kind": "digits", "version": 1, "anomaly_digit": int(anomaly_digit), "size": int(size),
              "seed": int(seed)}

    def write(folder: Path) -> None:
        digits = load_digits()
        good = np.flatnonzero(digits.target != anomaly_digit)
        bad = np.flatnonzero(digits.target == anomaly_digit)
        order = good[np.random.default_rng(seed).permutation(len(good))]
        n_train = int(round(TRAIN_FRACTION * len(good)))
        for sub, indices in (("train/good", order[:n_train]), ("test/good", order[n_train:]), ("test/anomaly", bad)):
            for i in indices:
                write_png(folder / sub / f"{i:04d}.png", render_digit(digits.images[i], size))

    root = build_once(out_dir, params, write)
    split = load_mvtec(root)
    return Split(f"digits:{anomaly_digit}", split.train, split.test, split.test_labels, None, split.defect_types)
