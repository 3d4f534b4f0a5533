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


def write_tiny_onnx(path: Path, height: int = 32, width: int = 32, channels: int = 4, stride: int = 8,
                    input_name: str = "image") -> Path:
    """A real ONNX graph (onnx.helper, no torch): ``input_name`` (N,3,H,W) → Conv k=s=stride →
    ``features`` (N,channels,H/stride,W/stride), fixed random weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(0).standard_normal((channels, 3, stride, stride)).astype(np.float32) / stride
    graph = helper.make_graph(
        [helper.make_node("Conv", [input_name, "w"], ["features"], kernel_shape=[stride, stride],
                          strides=[stride, stride])],
        "tiny", [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", 3, height, width])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT,
                                       ["N", channels, height // stride, width // stride])],
        [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def graph_artifact(tmp_path) -> Path:
    """A tiny real kNN artifact folder (32×32 input, 4-channel 4×4 features, 10-row bank, threshold set)
    built without torch: for artifact checks and ad-run runs that need no real backbone."""
    from anomedge.artifact import InputSpec, Metadata, write_artifact

    root = tmp_path / "art"
    root.mkdir()
    write_tiny_onnx(root / "model.onnx")
    bank = np.random.default_rng(1).standard_normal((10, 4)).astype(np.float32)
    meta = Metadata(detector="patchcore", input=InputSpec("image", 32, 32),
                    outputs={"names": ["features"], "features": {"shape": ["N", 4, 4, 4], "stride": 8}},
                    scoring={"kind": "knn", "k": 1, "metric": "l2", "placement": "host", "bank_rows": 10,
                             "bank_dtype": "float32", "kernel": "numpy"},
                    postprocess={"blur_sigma": 1.0, "reduction": {"name": "top_fraction_mean", "fraction": 0.1}},
                    model={"backbone": {"name": "tiny-conv"}}, thresholds={"image": 1.0},
                    files={"model.onnx": ""})
    write_artifact(root, meta, {"bank.npy": bank})
    return root
