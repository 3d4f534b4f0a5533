"""onnxruntime execution providers: a requested GPU provider that cannot load is an error, not a silent
CPU run; ``allow_fallback`` accepts the CPU and says so; EP options are the documented keys."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from anomedge.errors import ArtifactError, BackendUnavailable, InputError
from anomedge.runtime.backends.onnxruntime import (PROVIDERS, OnnxRuntimeBackend, check_single_distribution,
                                                   merged_provider_options, provider_options_for, trt_profile)


@pytest.mark.parametrize("device, provider", [("cuda", "CUDAExecutionProvider"),
                                              ("tensorrt", "TensorrtExecutionProvider")])
def test_missing_gpu_provider_is_refused(tiny_artifact, device, provider):
    if provider in ort.get_available_providers():
        pytest.skip(f"{provider} is available here (onnxruntime-gpu installed)")
    backend = OnnxRuntimeBackend(tiny_artifact, device=device)
    with pytest.warns(UserWarning), pytest.raises(BackendUnavailable, match=f"{provider}.*--allow-fallback"):
        backend.open()


def test_allow_fallback_runs_on_cpu_and_says_so(tiny_artifact):
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDAExecutionProvider is available here")
    spec = tiny_artifact.metadata.input
    batch = np.random.default_rng(0).normal(size=(1, 3, spec.height, spec.width)).astype(np.float32)
    with pytest.warns(UserWarning):
        fallback = OnnxRuntimeBackend(tiny_artifact, device="cuda", allow_fallback=True)
        fallback.open()
    assert fallback.providers == ["CPUExecutionProvider"]
    with OnnxRuntimeBackend(tiny_artifact, device="cpu") as cpu:
        np.testing.assert_array_equal(fallback.infer(batch)["features"], cpu.infer(batch)["features"])


def test_unknown_device_and_precision(tiny_artifact):
    with pytest.raises(BackendUnavailable, match="expected one of cpu, cuda, tensorrt"):
        OnnxRuntimeBackend(tiny_artifact, device="npu").open()
    with pytest.raises(InputError, match="fp32, fp16, int8"):
        OnnxRuntimeBackend(tiny_artifact, precision="int4")


def test_missing_variant_names_the_fix(tiny_artifact):
    if "int8" in tiny_artifact.metadata.model.get("variants", {}):
        pytest.skip("the fixture artifact already has an int8 variant")
    with pytest.raises(ArtifactError, match="no int8 variant"):
        OnnxRuntimeBackend(tiny_artifact, precision="int8")


def test_tensorrt_ep_options():
    opts = provider_options_for("tensorrt", "int8", engine_cache="/tmp/cache", device_id=1)
    trt = opts["TensorrtExecutionProvider"]
    assert trt["trt_int8_enable"] == "True" and trt["trt_fp16_enable"] == "False"
    assert trt["trt_int8_use_native_calibration_table"] == "False"
    assert trt["trt_engine_cache_enable"] == "True" and trt["trt_engine_cache_path"] == "/tmp/cache"
    assert trt["trt_timing_cache_path"] == "/tmp/cache" and trt["device_id"] == "1"
    assert opts["CUDAExecutionProvider"]["device_id"] == "1"
    fp16 = provider_options_for("tensorrt", "fp16")["TensorrtExecutionProvider"]
    assert fp16["trt_fp16_enable"] == "True" and "trt_engine_cache_enable" not in fp16
    assert provider_options_for("cpu") == {}
    assert set(provider_options_for("cuda")) == {"CUDAExecutionProvider"}


def test_user_provider_options_override_defaults():
    wanted = PROVIDERS["tensorrt"]
    defaults = provider_options_for("tensorrt", "fp32", engine_cache="/c")
    merged = merged_provider_options(wanted, defaults, {"TensorrtExecutionProvider": {
        "trt_max_workspace_size": 1 << 30, "trt_fp16_enable": True}})
    assert len(merged) == 3 and merged[2] == {}  # one dict per provider, CPU has none
    trt = merged[0]
    assert trt["trt_max_workspace_size"] == str(1 << 30) and trt["trt_fp16_enable"] == "True"
    assert trt["trt_engine_cache_path"] == "/c" and merged[1]["device_id"] == "0"
    with pytest.raises(InputError, match="provider_options for OpenVINOExecutionProvider"):
        merged_provider_options(wanted, defaults, {"OpenVINOExecutionProvider": {}})


def test_tensorrt_ep_profile_covers_batch_1_to_max():
    profile = trt_profile("image", 64, 96, 8)
    assert profile == {"trt_profile_min_shapes": "image:1x3x64x96", "trt_profile_opt_shapes": "image:1x3x64x96",
                       "trt_profile_max_shapes": "image:8x3x64x96"}


@pytest.mark.parametrize("options, message", [
    ({"qdq_fuson": "off"}, "backend onnxruntime has no option 'qdq_fuson'; valid options: threads, "
                           "model_file, precision, allow_fallback"),
    ({"qdq_fusion": "maybe"}, "qdq_fusion 'maybe': expected one of auto, on, off"),
    ({"precision": "bf16"}, "backend onnxruntime does not run precision 'bf16': it runs fp32, fp16, int8; "
                            "bf16 runs on openvino"),
    ({"cuda_graph": True}, "backend onnxruntime has no option 'cuda_graph'"),
])
def test_unknown_or_invalid_options_are_refused(tiny_artifact, options, message):
    with pytest.raises(InputError, match=re.escape(message)):
        OnnxRuntimeBackend(tiny_artifact, **options)


def test_torch_reference_refuses_int8_and_unknown_options(tiny_artifact):
    from anomedge.runtime.backends.torch_ref import TorchReference

    with pytest.raises(InputError, match=re.escape("backend torch does not run precision 'int8': it runs fp32; "
                                                   "int8 runs on onnxruntime, tensorrt")):
        TorchReference(tiny_artifact, precision="int8")
    with pytest.raises(InputError, match="backend torch has no option 'allow_fallback'"):
        TorchReference(tiny_artifact, allow_fallback=True)


def test_cpu_placement_is_reported(tiny_artifact):
    import onnx

    with OnnxRuntimeBackend(tiny_artifact, device="cpu") as backend:
        placement = backend.placement
    if placement is None:
        pytest.skip(f"onnxruntime {ort.__version__} cannot report graph assignment (needs ≥ 1.26)")
    assert list(placement) == ["CPUExecutionProvider"]
    # every node of the optimised graph is accounted for: at most the source graph's count (fusions merge)
    source = len(onnx.load(str(tiny_artifact.path("model.onnx"))).graph.node)
    assert 0 < len(placement["CPUExecutionProvider"]) <= source
    assert backend.not_placed == []


def test_two_onnxruntime_distributions_in_one_folder_are_refused():
    check_single_distribution({"onnxruntime": "/site", "onnxruntime-gpu": "/other"})  # shadowing, not mixing
    with pytest.raises(BackendUnavailable, match="onnxruntime and onnxruntime-gpu are both installed in /site"):
        check_single_distribution({"onnxruntime": "/site", "onnxruntime-gpu": "/site"})


GPU_WHEEL_SITE = os.environ.get("ANOMEDGE_ORT_GPU_SITE")  # a folder holding the real onnxruntime-gpu wheel
PROBE = """
import sys, warnings
from anomedge.artifact import Artifact
from anomedge.runtime.backends.onnxruntime import OnnxRuntimeBackend
import onnxruntime as ort
assert "CUDAExecutionProvider" in ort.get_available_providers(), ort.get_available_providers()
art = Artifact.load(sys.argv[1])
for device in ("cuda", "tensorrt"):
    backend = OnnxRuntimeBackend(art, device=device)
    try:
        backend.open()
        print(device, "OPENED", backend.providers)
    except Exception as exc:
        print(device, type(exc).__name__, exc, "| preloaded", backend.preloaded)
with warnings.catch_warnings(record=True) as said:
    warnings.simplefilter("always")
    backend = OnnxRuntimeBackend(art, device="tensorrt", allow_fallback=True)
    backend.open()
print("fallback", backend.providers, len(backend.not_placed), [str(w.message) for w in said])
print("torch_imported", "torch" in sys.modules)
"""


@pytest.mark.gpu
@pytest.mark.skipif(not GPU_WHEEL_SITE, reason="set ANOMEDGE_ORT_GPU_SITE to a folder with onnxruntime-gpu "
                                               "(pip install --no-deps --target DIR onnxruntime-gpu==1.26.0)")
def test_gpu_wheel_without_gpu_libraries_is_refused_with_the_missing_library(tiny_artifact):
    """The real onnxruntime-gpu wheel, in a torch-free process, on a machine without CUDA libraries:
    preload_dlls runs, the provider fails to load, and the error names the library; with
    allow_fallback the CPU run is reported as partial placement."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([GPU_WHEEL_SITE, str(Path(__file__).parents[1])])}
    out = subprocess.run([sys.executable, "-c", PROBE, str(tiny_artifact.root)], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = {line.split()[0]: line for line in out.stdout.splitlines() if line.split()}
    if "OPENED" in lines["cuda"]:
        pytest.skip("this machine has the CUDA libraries: the GPU tests cover it")
    for device, provider in (("cuda", "CUDAExecutionProvider"), ("tensorrt", "TensorrtExecutionProvider")):
        assert f"BackendUnavailable onnxruntime could not load {provider} (got CPUExecutionProvider; " \
               "not found: libcublas" in lines[device]
        assert "| preloaded ['onnxruntime.preload_dlls']" in lines[device]
    assert lines["fallback"].startswith("fallback ['CPUExecutionProvider']")
    assert "TensorrtExecutionProvider took 0 node(s)" in lines["fallback"]
    assert lines["torch_imported"] == "torch_imported False"  # torch-free: preloading, not torch, finds libraries
