"""Frame sources. Every source yields ``Frame`` records; a frame that cannot be read carries an
``error`` instead of an image, so the run records it and goes on.

``FolderSource(path)``: a folder, glob or .txt list of images, every file once, in order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import InputError
from .preprocess import read_image


@dataclass
class Frame:
    """One frame: ``image`` (H,W[,C]) uint8/uint16 as decoded, or None with ``error`` set."""

    source: str
    index: int
    timestamp: float
    image: np.ndarray | None = None
    error: str | None = None


class FolderSource:
    def __init__(self, path: str | Path):
        from ..datasets.folder import list_images

        self.path = str(path)
        self.paths = list_images(path)

    def __len__(self) -> int:
        return len(self.paths)

    def __iter__(self) -> Iterator[Frame]:
        for index, path in enumerate(self.paths):
            stamp = time.time()
            try:
                yield Frame(str(path), index, stamp, image=read_image(path))
            except InputError as exc:
                yield Frame(str(path), index, stamp, error=str(exc))
