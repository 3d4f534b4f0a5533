"""Shared fixtures: real images (ELPV cells, scikit-image photos) and a tiny real PatchCore artifact."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest


def elpv_image_paths(n: int) -> list[Path]:
    spec = importlib.util.find_spec("elpv_dataset")
    if spec is None:
        pytest.skip("elpv-dataset is not installed (pip install 'anomedge[export]')")
    images = Path(spec.origin).parent / "data" / "images"
    return sorted(images.glob("*.png"))[:n]


@pytest.fixture(scope="session")
def elpv_paths() -> list[Path]:
    return elpv_image_paths(40)


@pytest.fixture(scope="session")
def chelsea_bgr() -> np.ndarray:
    from skimage import data

    return cv2.cvtColor(data.chelsea(), cv2.COLOR_RGB2BGR)


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory, elpv_paths):
    """A real PatchCore artifact: EfficientNet-Lite0 weights, 64×64 input, fitted on 16 ELPV cells."""
    from anomedge.export.fit import fit_and_export

    out = tmp_path_factory.mktemp("artifact") / "tiny"
    report = fit_and_export(elpv_paths[:20], "patchcore", {"image_size": 64, "coreset_fraction": 0.25},
                            out, holdout=0.2, progress=False)
    return report.artifact
