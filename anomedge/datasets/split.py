"""A data split as file paths: good training images, test images with labels (and masks if any)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError


@dataclass(frozen=True, eq=False)
class Split:
    """``test_labels``: (n_test,) int8, 0 good / 1 anomalous. ``test_masks`` (pixel ground truth, None for
    images without one) and ``defect_types`` (the test folder name of each image) align with ``test``."""

    name: str
    train: tuple[Path, ...]
    test: tuple[Path, ...]
    test_labels: np.ndarray
    test_masks: tuple[Path | None, ...] | None = None
    defect_types: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        labels = np.asarray(self.test_labels)
        if labels.shape != (len(self.test),) or (labels.size and not np.isin(labels, (0, 1)).all()):
            raise InputError(f"split '{self.name}': test_labels must be ({len(self.test)},) of 0/1, "
                             f"got shape {labels.shape}")
        object.__setattr__(self, "test_labels", labels.astype(np.int8, copy=False))
        for field in ("test_masks", "defect_types"):
            value = getattr(self, field)
            if value is not None and len(value) != len(self.test):
                raise InputError(f"split '{self.name}': {field} has {len(value)} entries, expected {len(self.test)}")

    def subset(self, n: int) -> "Split":
        """The first ``n`` training images and at most ``n`` test images: the first half of the good ones
        and the first half of the anomalous ones (both classes kept, order kept)."""
        labels = self.test_labels
        keep = np.sort(np.r_[np.flatnonzero(labels == 0)[:n // 2], np.flatnonzero(labels == 1)[:n - n // 2]])
        pick = lambda values: None if values is None else tuple(values[i] for i in keep)  # noqa: E731
        return Split(self.name, self.train[:n], tuple(self.test[i] for i in keep), labels[keep],
                     pick(self.test_masks), pick(self.defect_types))

    def summary(self) -> str:
        n_bad = int(np.sum(self.test_labels))
        masks = sum(m is not None for m in self.test_masks) if self.test_masks else 0
        text = (f"{self.name}: {len(self.train)} train (good), {len(self.test)} test "
                f"({len(self.test) - n_bad} good, {n_bad} anomalous)")
        return text + (f", {masks} masks" if masks else "")
