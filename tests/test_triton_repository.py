"""ad-triton's model repository without a server: config.pbtxt parsed by Triton's own ModelConfig
protobuf (tritonclient), the native form's one ONNX graph run by onnxruntime vs the local runtime,
the python-backend model run in-process vs the local runtime, and the client backend's refusals.

Tolerances: native graph vs host runtime — patch scores and image scores rtol 1e-5 + atol 1e-4 (the
graph's chunked MatMul + exact refinement vs the host kernel, float32), anomaly maps 1e-4 of the map
range (ONNX Resize + Conv blur vs cv2); python model vs Inspector — exact (the same code).
"""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import onnxruntime as ort
import pytest

from anomedge.errors import BackendUnavailable, InputError
from anomedge.runtime.pipeline import Inspector
from anomedge.scoring.postprocess import image_scores
from anomedge.runtime.preprocess import preprocess, read_image
from anomedge.serving.triton import SHA_PARAMETER, ServingOptions, parse_config, write_repository


def _needs_tritonclient():
    pytest.importorskip("tritonclient.grpc", reason="tritonclient is not installed: pip install 'anomedge[triton]'")


@pytest.fixture(scope="module")
def repo(tiny_artifact, tmp_path_factory):
    pytest.importorskip("onnx", reason="the onnx form needs onnx: pip install 'anomedge[export]'")
    out = tmp_path_factory.mktemp("repo")
    write_repository(tiny_artifact.root, out, ("python", "onnx"), ServingOptions(max_batch=4, instances=2), threads=1)
    return out


@pytest.fixture(scope="module")
def frames(elpv_paths):
    return [read_image(p) for p in elpv_paths[20:26]]


@pytest.mark.parametrize("name, engine", [("anomedge", "backend"), ("anomedge_onnx", "platform")])
def test_config_matches_tritons_schema(repo, tiny_artifact, name, engine):
    _needs_tritonclient()
    config = parse_config((repo / name / "config.pbtxt").read_text())
    assert config.name == name and config.max_batch_size == 4
    assert (config.backend == "python") if engine == "backend" else (config.platform == "onnxruntime_onnx")
    assert list(config.input[0].dims) == [3, 64, 64] and config.input[0].name == "image"
    assert {o.name: list(o.dims) for o in config.output} == {"patch_scores": [8, 8], "anomaly_map": [64, 64]}
    assert list(config.dynamic_batching.preferred_batch_size) == [2, 4]
    assert config.instance_group[0].count == 2
    assert config.parameters[SHA_PARAMETER].string_value == tiny_artifact.sha256
    assert (repo / name / "1").is_dir()


def test_schema_check_rejects_what_triton_would(repo):
    _needs_tritonclient()
    text = (repo / "anomedge" / "config.pbtxt").read_text()
    with pytest.raises(InputError, match="ModelConfig schema"):
        parse_config(text.replace("max_batch_size", "max_batch"))
    with pytest.raises(InputError, match="ModelConfig schema"):
        parse_config(text.replace("KIND_CPU", "KIND_TPU"))


def test_native_graph_matches_the_local_runtime(repo, tiny_artifact, frames):
    session = ort.InferenceSession(str(repo / "anomedge_onnx" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert (repo / "anomedge_onnx" / "1" / "metadata.json").read_text() == (tiny_artifact.root / "metadata.json").read_text()
    batch = preprocess(frames[:4], tiny_artifact.metadata.input)  # max_batch 4
    patch, maps = session.run(["patch_scores", "anomaly_map"], {"image": batch})
    with Inspector(tiny_artifact, "onnxruntime", threads=1) as local:
        expected = local.inspect(frames[:4])
        host_patch = local.stages.score(local.stages.infer(batch))
        labels = [local.decide(float(s)) for s in expected.scores]
    np.testing.assert_allclose(patch, host_patch, rtol=1e-5, atol=1e-4)
    scores = image_scores(patch, tiny_artifact.metadata.postprocess["reduction"])
    np.testing.assert_allclose(scores, expected.scores, rtol=1e-5, atol=1e-4)
    span = float(expected.maps.max() - expected.maps.min())
    np.testing.assert_allclose(maps, expected.maps, rtol=0, atol=1e-4 * span)
    with Inspector(tiny_artifact, "onnxruntime", threads=1) as local:
        assert [local.decide(float(s)) for s in scores] == labels


def _load_model_py(path):
    spec = importlib.util.spec_from_file_location("anomedge_triton_model_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_python_backend_model_is_the_runtime(repo, tiny_artifact, frames):
    import json

    module = _load_model_py(repo / "anomedge" / "1" / "model.py")
    model = module.TritonPythonModel()
    params = {SHA_PARAMETER: {"string_value": tiny_artifact.sha256}, "threads": {"string_value": "1"}}
    model.initialize({"model_config": json.dumps({"parameters": params})})
    batch = preprocess(frames, tiny_artifact.metadata.input)
    patch, maps = model.score(batch)
    with Inspector(tiny_artifact, "onnxruntime", threads=1) as local:
        expected = local.inspect(frames)
    np.testing.assert_array_equal(image_scores(patch, tiny_artifact.metadata.postprocess["reduction"]), expected.scores)
    np.testing.assert_array_equal(maps, expected.maps)
    model.finalize()
    wrong = {"model_config": json.dumps({"parameters": {SHA_PARAMETER: {"string_value": "0" * 64}}})}
    with pytest.raises(RuntimeError, match="does not match config.pbtxt"):
        module.TritonPythonModel().initialize(wrong)


def test_versions_are_immutable_and_options_checked(repo, tiny_artifact, tmp_path):
    with pytest.raises(InputError, match="pass --version 2"):
        write_repository(tiny_artifact.root, repo, ("python",))
    with pytest.raises(InputError, match="--max-batch 0"):
        write_repository(tiny_artifact.root, tmp_path, ("python",), ServingOptions(max_batch=0))
    with pytest.raises(InputError, match="--form"):
        write_repository(tiny_artifact.root, tmp_path, ("tflite",))


def test_missing_tritonclient_names_the_pip_command(monkeypatch):
    from anomedge.runtime.registry import get_backend

    monkeypatch.setitem(sys.modules, "tritonclient", None)
    monkeypatch.setitem(sys.modules, "tritonclient.http", None)
    with pytest.raises(BackendUnavailable, match=r"pip install 'tritonclient\[http,grpc\]'"):
        get_backend("triton")


def test_client_refuses_bad_urls_and_absent_servers(tiny_artifact):
    _needs_tritonclient()
    import socket

    from anomedge.runtime.backends.triton import TritonBackend

    with pytest.raises(InputError, match="needs --url"):
        TritonBackend(tiny_artifact)
    with pytest.raises(InputError, match="without a scheme"):
        TritonBackend(tiny_artifact, url="http://127.0.0.1:8000")
    with pytest.raises(InputError, match="--protocol"):
        TritonBackend(tiny_artifact, url="127.0.0.1:8000", protocol="ws")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(BackendUnavailable, match="cannot reach the server"):
        TritonBackend(tiny_artifact, url=f"127.0.0.1:{port}", timeout_s=2).open()


def test_ad_triton_cli_writes_both_forms_and_fails_in_one_line(tiny_artifact, tmp_path):
    pytest.importorskip("onnx", reason="the onnx form needs onnx: pip install 'anomedge[export]'")
    from click.testing import CliRunner

    from anomedge.cli.triton import main

    out = tmp_path / "repo"
    result = CliRunner().invoke(main, [str(tiny_artifact.root), "--out", str(out), "--form", "both", "--max-batch", "2"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [f"python: {out / 'anomedge'}", f"onnx: {out / 'anomedge_onnx'}"]
    assert "max_batch_size: 2" in (out / "anomedge_onnx" / "config.pbtxt").read_text()
    again = CliRunner().invoke(main, [str(tiny_artifact.root), "--out", str(out)])
    assert again.exit_code == 2 and again.output.strip().splitlines()[-1].startswith("error: ") and "--version 2" in again.output
    missing = CliRunner().invoke(main, [str(tmp_path / "nope"), "--out", str(out)])
    assert missing.exit_code == 2 and "no metadata.json" in missing.output
