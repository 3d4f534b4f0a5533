"""onnxruntime execution providers: a requested GPU provider that cannot load is an error, not a silent
CPU run; ``allow_fallback`` accepts the CPU and says so; EP options are the documented keys."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from anomedge.errors import ArtifactError, BackendUnavailable, InputError
from anomedge.runtime.backends.onnxruntime import OnnxRuntimeBackend, provider_options_for


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


def test_user_provider_options_override_defaults(tiny_artifact, monkeypatch):
    seen = {}

    class FakeSession:
        def __init__(self, path, options, providers, provider_options):
            seen.update(providers=providers, provider_options=provider_options)

        def get_providers(self):
            return seen["providers"]

        def get_outputs(self):
            return []

        def get_inputs(self):
            return [type("I", (), {"name": "image"})()]

    monkeypatch.setattr(ort, "InferenceSession", FakeSession)
    backend = OnnxRuntimeBackend(tiny_artifact, device="tensorrt", engine_cache="/c",
                                 provider_options={"TensorrtExecutionProvider": {"trt_max_workspace_size": 1 << 30,
                                                                                 "trt_fp16_enable": True}})
    backend.open()
    trt = seen["provider_options"][0]
    assert trt["trt_max_workspace_size"] == str(1 << 30) and trt["trt_fp16_enable"] == "True"
    assert trt["trt_engine_cache_path"] == "/c"
    assert seen["providers"][0] == "TensorrtExecutionProvider"
