"""Moved to ``anomedge.scoring.kernels``; this name stays importable for existing callers."""

from ..scoring.kernels import *  # noqa: F401,F403
from ..scoring.kernels import BANK_BLOCK_ROWS, KnnIndex, MahalanobisIndex, inverse_cov_factor, knn_distances  # noqa: F401
