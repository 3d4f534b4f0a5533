"""ELPV solar-cell electroluminescence images (PyPI ``elpv-dataset``: 2,624 300×300 8-bit gray cells).

The fixed protocol, per cell type (mono | poly):
- train = 60 % of the defect-free cells (defect probability 0), chosen by ``default_rng(seed).permutation``;
- test  = the remaining defect-free cells (label 0) + the cells with defect probability > 0.5
  (stored as 0.6666… and 1.0; label 1). Cells rated 1/3 are ambiguous and left out.
Train and test keep labels.csv order. labels.csv is read directly: ``elpv_dataset.load_dataset`` would
decode all 2,624 images into memory.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from ..errors import InputError
from .split import Split

CELL_TYPES = ("mono", "poly")


def elpv_root() -> Path:
    """The installed package's data folder (labels.csv, images/); nothing is loaded into memory."""
    spec = importlib.util.find_spec("elpv_dataset")
    if spec is None or spec.origin is None:
        raise InputError("the ELPV data set is not installed: pip install elpv-dataset "
                         "(or pip install 'anomedge[export]')")
    root = Path(spec.origin).parent / "data"
    if not (root / "labels.csv").is_file():
        raise InputError(f"{root}: labels.csv is missing from the elpv-dataset package; "
                         "reinstall it: pip install --force-reinstall elpv-dataset")
    return root


def read_labels(root: Path) -> list[tuple[Path, float, str]]:
    """(image path, defect probability, cell type) for every row of labels.csv."""
    rows = []
    for line in (root / "labels.csv").read_text().splitlines():
        if line.strip():
            path, prob, kind = line.split()
            rows.append((root / path, float(prob), kind))
    return rows


def load_elpv(cell_type: str = "mono", seed: int = 0) -> Split:
    """The protocol above for one cell type; paths point into the installed package. Counts with seed 0:
    mono 353 train, test 235 good + 369 anomalous; poly 552 train, test 368 good + 452 anomalous."""
    if cell_type not in CELL_TYPES:
        raise InputError(f"ELPV cell type '{cell_type}': expected one of {', '.join(CELL_TYPES)}")
    rows = [r for r in read_labels(elpv_root()) if r[2] == cell_type]
    good = [p for p, prob, _ in rows if prob == 0]
    bad = [p for p, prob, _ in rows if prob > 0.5]
    order = np.random.default_rng(seed).permutation(len(good))
    n_train = int(round(0.6 * len(good)))
    train = tuple(good[i] for i in sorted(order[:n_train]))
    test_good = [good[i] for i in sorted(order[n_train:])]
    labels = np.r_[np.zeros(len(test_good), np.int8), np.ones(len(bad), np.int8)]
    return Split(f"elpv:{cell_type}", train, tuple(test_good + bad), labels)
