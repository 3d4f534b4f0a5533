"""Shared torch helpers for detectors: batched feature extraction from image files."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from ..artifact import InputSpec
from ..runtime.preprocess import preprocess, read_image


def batches(paths: Sequence[Path], spec: InputSpec, batch_size: int) -> Iterator[torch.Tensor]:
    """Yield (B,3,H,W) float32 tensors, preprocessed exactly as the runtime does."""
    for start in range(0, len(paths), batch_size):
        frames = [read_image(p) for p in paths[start:start + batch_size]]
        yield torch.from_numpy(preprocess(frames, spec))


@torch.inference_mode()
def extract(module: Callable[[torch.Tensor], torch.Tensor], paths: Sequence[Path], spec: InputSpec,
            batch_size: int = 16, progress: bool | None = None, augment: Sequence[str] = ()) -> np.ndarray:
    """Run ``module`` over all images → concatenated (N·(1+len(augment)), …) float32 numpy array.

    ``augment``: view names of ``augment.VIEWS``; each batch is followed by its transformed copies, so
    the rows are [batch 0, its views…, batch 1, …]."""
    from ..progress import steps
    from .augment import with_views

    views = tuple(augment)
    total = (len(paths) + batch_size - 1) // batch_size * (1 + len(views))
    outs = [module(b).float().numpy()
            for b in steps(with_views(batches(paths, spec, batch_size), views), total, "features", progress)]
    return np.concatenate(outs, axis=0)
