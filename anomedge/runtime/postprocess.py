"""Moved to ``anomedge.scoring.postprocess``; this name stays importable for existing callers."""

from ..scoring.postprocess import REDUCTIONS, anomaly_maps, image_scores, kernel_size  # noqa: F401
