"""TensorRT: engine records and refusal messages run everywhere; building and running need a GPU.

The GPU tests are marked ``tensorrt`` and ``gpu`` and skip with the reason when TensorRT, cuda-python
or a GPU is missing (``pytest -ra`` prints it). benchmarks/gpu_check.sh runs them on a GPU machine.
"""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest

from anomedge.artifact import Artifact
from anomedge.errors import ArtifactError, BackendUnavailable, InputError
from anomedge.export.formats import FORMATS, check_options, parse_formats
from anomedge.export.tensorrt import EngineProfile, trtexec_command
from anomedge.runtime.backends.tensorrt import check_engine, rebuild_command


def _record(artifact, **changes):
    record = {"file": "model.engine", "onnx": "model.onnx", "onnx_sha256": artifact.metadata.files["model.onnx"],
              "tensorrt": "10.13.0", "gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "precision": "fp16"}
    return {**record, **changes}


GPU = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}


def test_matching_engine_is_accepted(tiny_artifact):
    check_engine(tiny_artifact, _record(tiny_artifact), "10.13.0", GPU)


@pytest.mark.parametrize("changes, gpu, version, message", [
    ({"onnx_sha256": "0" * 64}, GPU, "10.13.0", "built from another model.onnx"),
    ({}, GPU, "11.0.0", "built with TensorRT 10.13.0, this is TensorRT 11.0.0"),
    ({}, {"name": "Orin", "compute_capability": "8.7"}, "10.13.0", "this GPU is Orin \\(sm 8.7\\)"),
])
def test_mismatching_engine_is_refused_with_the_rebuild_command(tiny_artifact, changes, gpu, version, message):
    with pytest.raises(ArtifactError, match=message) as info:
        check_engine(tiny_artifact, _record(tiny_artifact, **changes), version, gpu)
    assert rebuild_command(tiny_artifact.root, "fp16") in str(info.value)


def test_trtexec_command_and_profile():
    cmd = trtexec_command("model.int8.onnx", "model.engine", "image", 224, 224, EngineProfile(1, 4, 16, 2048), "t.cache")
    assert cmd.split() == ["trtexec", "--onnx=model.int8.onnx", "--saveEngine=model.engine", "--stronglyTyped",
                           "--minShapes=image:1x3x224x224", "--optShapes=image:4x3x224x224",
                           "--maxShapes=image:16x3x224x224", "--memPoolSize=workspace:2048M", "--timingCacheFile=t.cache"]
    with pytest.raises(InputError, match="1 ≤ min ≤ opt ≤ max"):
        EngineProfile(2, 1, 8)


def test_formats_table():
    assert [f.name for f in parse_formats("onnx, engine,openvino")] == ["onnx", "engine", "openvino"]
    assert FORMATS["engine"].gpu and not FORMATS["engine"].cpu and FORMATS["engine"].suffix == ".engine"
    with pytest.raises(InputError, match="onnx, engine, openvino"):
        parse_formats("tflite")
    with pytest.raises(InputError, match="does not take calib"):
        check_options(FORMATS["engine"], {"calib": "x"})
    with pytest.raises(InputError, match="fp32, fp16"):
        check_options(FORMATS["openvino"], {"precision": "int8"})


def test_backend_without_engine_names_the_build_command(tiny_artifact):
    from anomedge.runtime.backends.tensorrt import TensorRtBackend

    with pytest.raises(ArtifactError, match="python -m anomedge.export.tensorrt"):
        TensorRtBackend(tiny_artifact)


def _require_gpu():
    try:
        from anomedge.runtime.registry import get_backend

        get_backend("tensorrt")
    except BackendUnavailable as exc:
        pytest.skip(f"TensorRT GPU tests skipped: {exc}")


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_engine_matches_onnxruntime(tiny_artifact, tmp_path, cuda_graph):
    """fp32 engine vs onnxruntime CPU, batch 1 and 3: features within 1 % of their scale (TensorRT may
    pick TF32 tactics for float32 convolutions), then the profile limit and a tampered record."""
    _require_gpu()
    from anomedge.export.tensorrt import build_engine
    from anomedge.runtime.backends.onnxruntime import OnnxRuntimeBackend
    from anomedge.runtime.backends.tensorrt import TensorRtBackend

    root = tmp_path / "a"
    shutil.copytree(tiny_artifact.root, root)
    build_engine(root, "fp32", EngineProfile(1, 1, 4, 512))
    artifact = Artifact.load(root)
    assert artifact.metadata.model["engine"]["trtexec"].startswith("trtexec ")
    spec = artifact.metadata.input
    rng = np.random.default_rng(0)
    with TensorRtBackend(artifact, cuda_graph=cuda_graph) as trt_backend, OnnxRuntimeBackend(artifact) as ort_backend:
        for n in (1, 3, 1):
            batch = rng.normal(size=(n, 3, spec.height, spec.width)).astype(np.float32)
            got, want = trt_backend.infer(batch)["features"], ort_backend.infer(batch)["features"]
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-2 * float(np.abs(want).max()))
        with pytest.raises(InputError, match="profile allows 1..4"):
            trt_backend.infer(np.zeros((5, 3, spec.height, spec.width), np.float32))
    tampered = dataclasses.replace(artifact.metadata, model={**artifact.metadata.model,
                                                              "engine": {**artifact.metadata.model["engine"], "tensorrt": "0.0"}})
    with pytest.raises(ArtifactError, match="rebuild"):
        TensorRtBackend(Artifact(root, tampered)).open()
