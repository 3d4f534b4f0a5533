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


@pytest.fixture()
def artifact_copy(tiny_artifact, tmp_path) -> Path:
    """A writable copy of ``tiny_artifact``'s folder (for tamper and upgrade tests); no kernel cache."""
    import shutil

    root = tmp_path / "artifact"
    shutil.copytree(tiny_artifact.root, root, ignore=shutil.ignore_patterns(".cache"))
    return root


def rehash(root: Path, *names: str) -> None:
    """Update the sha256 of ``names`` in ``root``'s metadata.json, as a tamper that knows the format would."""
    import json

    from anomedge.artifact import METADATA, sha256_file, write_metadata

    meta = json.loads((root / METADATA).read_text())
    for name in names:
        meta["files"][name] = sha256_file(root / name)
    write_metadata(root, meta)


@pytest.fixture(scope="session")
def no_onnx_pythonpath(tmp_path_factory) -> str:
    """A PYTHONPATH entry whose sitecustomize makes onnx, torch, timm and sklearn unimportable — the
    edge's base install — followed by the checkout under test."""
    import anomedge

    shim = tmp_path_factory.mktemp("no_onnx")
    (shim / "sitecustomize.py").write_text(
        "import sys\nfor name in ('onnx', 'torch', 'timm', 'sklearn', 'torchvision'):\n    sys.modules[name] = None\n")
    return f"{shim}{__import__('os').pathsep}{Path(anomedge.__file__).parent.parent}"
