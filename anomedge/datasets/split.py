"""A data split as file paths: good training images, test images with labels (and masks if any)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Split:
    name: str
    train: tuple[Path, ...]
    test: tuple[Path, ...]
    test_labels: np.ndarray  # (n_test,) int8: 0 good, 1 anomalous
    test_masks: tuple[Path | None, ...] | None = None
    defect_types: tuple[str, ...] | None = None

    def summary(self) -> str:
        n_bad = int(np.sum(self.test_labels))
        return f"{self.name}: {len(self.train)} train (good), {len(self.test)} test ({len(self.test) - n_bad} good, {n_bad} anomalous)"
