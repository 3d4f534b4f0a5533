"""TensorRT: engine records and refusal messages run everywhere; building and running need a GPU.

The GPU tests are marked ``tensorrt`` and ``gpu`` and skip with the reason when TensorRT, cuda-python
or a GPU is missing (``pytest -ra`` prints it). benchmarks/gpu_check.sh runs them on a GPU machine.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import shutil
import warnings

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
    with pytest.raises(InputError, match="does not take method"):
        check_options(FORMATS["engine"], {"method": "entropy"})
    with pytest.raises(InputError, match="precision 'bf16': expected one of fp32, fp16, int8"):
        check_options(FORMATS["engine"], {"precision": "bf16"})
    with pytest.raises(InputError, match="fp32, fp16"):
        check_options(FORMATS["openvino"], {"precision": "int8"})


def test_backend_without_engine_names_the_build_command(tiny_artifact):
    from anomedge.runtime.backends.tensorrt import TensorRtBackend

    with pytest.raises(ArtifactError, match="python -m anomedge.export.tensorrt"):
        TensorRtBackend(tiny_artifact)


def _with_engine(artifact, **record):
    meta = artifact.metadata
    return Artifact(artifact.root, dataclasses.replace(meta, model={**meta.model, "engine": _record(artifact, **record)}))


def test_backend_refuses_another_precision_or_placement_than_its_engine(tiny_artifact):
    from anomedge.runtime.backends.tensorrt import TensorRtBackend

    artifact = _with_engine(tiny_artifact, precision="fp32")
    with pytest.raises(InputError, match="model.engine is a fp32 engine, not fp16; build that one with: .*--precision fp16"):
        TensorRtBackend(artifact, precision="fp16")
    with pytest.raises(ArtifactError, match="built from model.onnx, this run needs model.graph.onnx \\(placement graph\\)"
                                            ".*--placement graph"):
        TensorRtBackend(artifact, model_file="model.graph.onnx")
    with pytest.raises(InputError, match="backend tensorrt has no option 'cuda_grpah'; valid options: "
                                         "threads, model_file, precision, cuda_graph, device_id"):
        TensorRtBackend(artifact, cuda_grpah=True)
    with pytest.raises(InputError, match="device 'cpu': expected cuda, cuda:N or a GPU index N"):
        TensorRtBackend(artifact, device="cpu")
    assert TensorRtBackend(artifact, device="cuda:1").device_id == 1
    assert TensorRtBackend(artifact, device="cuda:1", device_id=0).device_id == 0


def test_graph_placement_engine_source(tiny_artifact, tmp_path):
    from anomedge.export.writer import add_graph_placement
    from anomedge.export.tensorrt import onnx_file

    with pytest.raises(ArtifactError, match="no model.graph.onnx for placement graph"):
        onnx_file(tiny_artifact, "fp32", "graph")
    root = tmp_path / "a"
    shutil.copytree(tiny_artifact.root, root)
    add_graph_placement(root, with_map=True)
    artifact = Artifact.load(root)
    assert onnx_file(artifact, "fp32", "graph") == "model.graph.onnx"
    with pytest.raises(InputError, match="exists in fp32 only"):
        onnx_file(artifact, "fp16", "graph")


def test_graph_the_tensorrt_importer_gets(tiny_artifact, tmp_path):
    """The merged graph declares its default opset once, and the map's Resize uses full-rank scales
    (no ``axes``; 2-element sizes on a dynamic batch are what the ONNX-TensorRT importer refuses)."""
    import onnx

    from anomedge.export.writer import add_graph_placement

    root = tmp_path / "a"
    shutil.copytree(tiny_artifact.root, root)
    model = onnx.load(str(add_graph_placement(root, with_map=True)))
    domains = [o.domain for o in model.opset_import]
    assert len(domains) == len(set(domains)) and "" in domains
    init = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    resizes = [n for n in model.graph.node if n.op_type == "Resize"]
    assert resizes
    for node in resizes:  # the backbone's own (full-rank sizes) and the head's (full-rank scales)
        assert "axes" not in {a.name for a in node.attribute}
        given = [name for name in node.input[2:] if name]
        assert len(given) == 1 and (given[0] not in init or init[given[0]].shape == (4,))
    head = [init[n.input[2]] for n in resizes if len(n.input) == 3 and n.input[2] in init]
    assert head and all(scales[:2].tolist() == [1.0, 1.0] for scales in head)


def test_no_gpu_message_names_the_cuda_error():
    """Real cuda-python on a machine without an NVIDIA driver: cudaGetDeviceCount's error by name."""
    pytest.importorskip("cuda.bindings.runtime", reason="cuda-python is not installed")
    from anomedge.runtime.backends.tensorrt import gpu_count

    try:
        count = gpu_count()
    except BackendUnavailable as exc:
        message = str(exc)
    else:
        pytest.skip(f"{count} GPU(s) here: the GPU tests cover this machine")
    assert message.startswith("TensorRT needs an NVIDIA GPU: cudaGetDeviceCount failed with cudaError")
    if "cudaErrorInsufficientDriver" in message:
        assert "older than this cuda-python's CUDA major" in message


def test_build_without_tensorrt_names_the_install(tiny_artifact):
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here")
    from anomedge.export.tensorrt import build_engine

    with pytest.raises(BackendUnavailable, match="TensorRT is not installed: .*pypi.nvidia.com"):
        build_engine(tiny_artifact.root)


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


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_reduced_precision_engines_build_and_track_onnxruntime(tiny_artifact, tmp_path, elpv_paths, precision):
    """fp16 and the symmetric INT8 Q/DQ variant build strongly typed engines; features within the
    variant's own distance from fp32 (5 % fp16, 30 % int8 of the feature scale)."""
    _require_gpu()
    from anomedge.export.precision import add_variant
    from anomedge.export.tensorrt import build_engine
    from anomedge.runtime.backends.onnxruntime import OnnxRuntimeBackend
    from anomedge.runtime.backends.tensorrt import TensorRtBackend

    root = tmp_path / "a"
    shutil.copytree(tiny_artifact.root, root)
    add_variant(root, precision, elpv_paths[:8])
    build_engine(root, precision, EngineProfile(1, 1, 2, 512))
    artifact = Artifact.load(root)
    spec = artifact.metadata.input
    batch = np.random.default_rng(1).normal(size=(2, 3, spec.height, spec.width)).astype(np.float32)
    with TensorRtBackend(artifact) as trt_backend, OnnxRuntimeBackend(artifact) as ort_backend:
        got, want = trt_backend.infer(batch)["features"], ort_backend.infer(batch)["features"]
    tolerance = {"fp16": 0.05, "int8": 0.3}[precision]
    np.testing.assert_allclose(got, want, rtol=0, atol=tolerance * float(np.abs(want).max()))


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.slow
def test_graph_placement_engine_and_timing_cache(tiny_artifact, tmp_path, elpv_paths):
    """The merged graph (scoring head inside) builds and matches onnxruntime CPU's graph placement; a
    timing cache TensorRT refuses is replaced (warned), and the cache lives in the artifact."""
    _require_gpu()
    from anomedge.export.writer import add_graph_placement
    from anomedge.export.tensorrt import TIMING_CACHE, build_engine
    from anomedge.runtime.heads import graph_view
    from anomedge.runtime.pipeline import Inspector
    from anomedge.runtime.preprocess import read_image

    root = tmp_path / "a"
    shutil.copytree(tiny_artifact.root, root)
    add_graph_placement(root)
    (root / TIMING_CACHE).write_bytes(b"not a timing cache")
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        build_engine(root, "fp32", EngineProfile(1, 1, 2, 512), placement="graph")
    assert any("refused this timing cache" in str(w.message) for w in said)
    assert (root / TIMING_CACHE).stat().st_size > 100 and not (tmp_path / TIMING_CACHE).exists()
    artifact = Artifact.load(root)
    assert artifact.metadata.model["engine"]["onnx"] == "model.graph.onnx"
    frames = [read_image(p) for p in elpv_paths[20:24]]
    scores = {}
    for backend in ("tensorrt", "onnxruntime"):
        with Inspector(artifact, backend, placement="graph") as inspector:
            scores[backend] = np.concatenate([inspector.inspect([f]).scores for f in frames])
    np.testing.assert_allclose(scores["tensorrt"], scores["onnxruntime"], rtol=1e-2)
    build_engine(root, "fp32", EngineProfile(1, 1, 2, 512), placement="graph")  # reuses the cache it wrote
