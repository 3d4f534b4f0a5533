"""Fit a detector on a data split, export the artifact, and set its default threshold.

A held-out fraction of the good training images (default 10 %) is scored through the exported
runtime (onnxruntime) — not through torch — to set the default image threshold (quantile 0.99 of
those scores). The threshold lives in metadata; ``ad-calibrate`` replaces it without a re-export.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..artifact import Artifact
from ..errors import InputError
from ..models.detector import get_detector
from ..runtime.pipeline import Inspector
from ..runtime.preprocess import read_image
from .writer import write_detector


@dataclass
class ExportReport:
    artifact: Artifact
    fit_seconds: float
    export_seconds: float
    n_fit: int
    n_holdout: int
    threshold: float | None


def split_holdout(paths: Sequence[Path], fraction: float, seed: int = 0) -> tuple[list[Path], list[Path]]:
    """Seeded split of good images into (fit, holdout)."""
    if not 0 <= fraction < 1:
        raise InputError(f"holdout fraction {fraction}: expected a value in [0, 1)")
    order = np.random.default_rng(seed).permutation(len(paths))
    n_hold = int(round(len(paths) * fraction))
    if n_hold and len(paths) - n_hold < 1:
        raise InputError(f"{len(paths)} good images: too few to hold {fraction:.0%} out; lower --holdout")
    hold = sorted(order[:n_hold])
    fit = sorted(order[n_hold:])
    return [paths[i] for i in fit], [paths[i] for i in hold]


def holdout_threshold(artifact: Artifact, holdout: Sequence[Path], quantile: float) -> dict[str, Any]:
    """Score the held-out good images on onnxruntime → the thresholds block (quantile method)."""
    with Inspector(artifact, "onnxruntime") as inspector:
        scores = np.concatenate([inspector.inspect([read_image(p)]).scores for p in holdout])
    return {"image": float(np.quantile(scores, quantile)), "pixel": None, "method": "quantile",
            "params": {"q": quantile, "source": "holdout of the training good images", "n_good": int(len(scores))},
            "good_scores": {"min": float(scores.min()), "median": float(np.median(scores)), "max": float(scores.max())}}


def fit_and_export(train: Sequence[Path], detector: str, params: dict[str, Any], out: str | Path,
                   holdout: float = 0.1, quantile: float = 0.99, seed: int = 0,
                   progress: bool | None = None) -> ExportReport:
    fit_paths, hold_paths = split_holdout(list(train), holdout, seed)
    model = get_detector(detector).from_params(params, progress=progress)
    start = time.perf_counter()
    model.fit(fit_paths)
    fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    artifact = write_detector(model, out, golden_images=[*hold_paths, *fit_paths])
    export_seconds = time.perf_counter() - start
    threshold = None
    if hold_paths:
        thresholds = holdout_threshold(artifact, hold_paths, quantile)
        with Artifact.edit(artifact.root) as edit:
            edit.meta["thresholds"] = thresholds
        artifact = edit.artifact
        threshold = thresholds["image"]
    return ExportReport(artifact, fit_seconds, export_seconds, len(fit_paths), len(hold_paths), threshold)
