"""ad-quantize (FP16 / INT8 Q/DQ variants, hashed) and ad-eval's report on a real artifact."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from anomedge.artifact import Artifact
from anomedge.errors import ArtifactError
from anomedge.runtime.pipeline import Inspector
from anomedge.runtime.preprocess import read_image


def cli(module, *args, env=None):
    code = f"from anomedge.cli.{module} import main; main()"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=300,
                          env=env)


@pytest.fixture(scope="module")
def variants(tiny_artifact, tmp_path_factory, elpv_paths):
    root = tmp_path_factory.mktemp("variants") / "art"
    shutil.copytree(tiny_artifact.root, root)
    calib = root.parent / "calib"
    calib.mkdir()
    for p in elpv_paths[:12]:
        shutil.copy(p, calib / p.name)
    assert cli("quantize", root, "--precision", "fp16").returncode == 0
    result = cli("quantize", root, "--precision", "int8", "--calib", calib)
    assert result.returncode == 0, result.stderr
    assert "12 images" in result.stderr  # fewer than recommended: warned, with the number
    return Artifact.load(root)


def test_variants_are_hashed_and_listed(variants):
    files = variants.metadata.files
    assert {"model.fp16.onnx", "model.int8.onnx"} <= set(files)
    assert variants.metadata.model["variants"] == {"fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
    sizes = {p: variants.path(variants.variant(p)).stat().st_size for p in ("fp32", "fp16", "int8")}
    assert sizes["fp16"] < 0.6 * sizes["fp32"] and sizes["int8"] < 0.5 * sizes["fp32"]


def test_int8_graph_is_qdq(variants):
    import onnx

    ops = {n.op_type for n in onnx.load(str(variants.path("model.int8.onnx"))).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_variant_scores_stay_close_to_fp32(variants, elpv_paths):
    frames = [read_image(p) for p in elpv_paths[20:30]]
    scores = {}
    for precision in ("fp32", "fp16", "int8"):
        with Inspector(variants, "onnxruntime", precision=precision) as insp:
            scores[precision] = np.concatenate([insp.inspect([f]).scores for f in frames])
    np.testing.assert_allclose(scores["fp16"], scores["fp32"], rtol=1e-2)  # half precision: ~1e-3 measured
    np.testing.assert_allclose(scores["int8"], scores["fp32"], rtol=0.15)  # 8-bit activations: a few % measured
    assert not np.allclose(scores["int8"], scores["fp32"], rtol=1e-6)  # it really is another model


def test_missing_variant_says_how_to_make_it(tiny_artifact):
    with pytest.raises(ArtifactError, match="ad-quantize .* --precision int8"):
        Inspector(tiny_artifact, "onnxruntime", precision="int8")


def test_int8_without_calibration_is_refused(tiny_artifact):
    result = cli("quantize", tiny_artifact.root, "--precision", "int8")
    assert result.returncode == 2 and "pass --calib" in result.stderr


def test_eval_report_folder(variants, tmp_path):
    from anomedge.datasets.elpv import elpv_root, read_labels

    data = tmp_path / "data"
    rows = [r for r in read_labels(elpv_root()) if r[2] == "poly"]
    for sub, paths in (("train/good", [rows[0][0]]), ("test/good", [p for p, pr, _ in rows if pr == 0][5:11]),
                       ("test/crack", [p for p, pr, _ in rows if pr == 1][:5])):
        (data / sub).mkdir(parents=True)
        for p in paths:
            shutil.copy(p, data / sub / p.name)
    out = tmp_path / "report"
    import os

    env = {**os.environ, "ANOMEDGE_REGISTRY": str(tmp_path / "r.sqlite")}
    result = cli("eval", variants.root, "--data", data, "--out", out, "--precision", "fp16", env=env)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["image"]["n_good"] == 6 and metrics["image"]["n_defect"] == 5
    assert metrics["run"]["precision"] == "fp16"
    lines = (out / "scores.csv").read_text().splitlines()
    assert lines[0] == "path,label,score,prediction" and len(lines) == 12
    assert (out / "curves.png").stat().st_size > 10_000
    html = (out / "report.html").read_text()
    assert "curves.png" in html and "worst_good_0.png" in html and (out / "worst_good_0.png").is_file()


def test_int8_without_qdq_fusion_is_the_graphs_own_arithmetic(variants, elpv_paths):
    """qdq_fusion=off must equal the Q/DQ graph run op by op (all graph optimisations off): the
    reference semantics of the variant, which fused integer kernels on non-VNNI x86 depart from."""
    import onnxruntime as ort

    from anomedge.runtime.backends.onnxruntime import OnnxRuntimeBackend
    from anomedge.runtime.preprocess import preprocess

    batch = preprocess([read_image(p) for p in elpv_paths[20:24]], variants.metadata.input)
    with OnnxRuntimeBackend(variants, precision="int8", qdq_fusion="off") as backend:
        got = backend.infer(batch)
        assert backend.qdq_fused is False
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(variants.path("model.int8.onnx")), options, providers=["CPUExecutionProvider"])
    want = session.run(None, {session.get_inputs()[0].name: batch})
    for name, value in zip([o.name for o in session.get_outputs()], want):
        # Float re-association flips a rounding tie now and then: one output step (a few % of the range)
        # on a few % of the values. Measured here: max 3.2 %, RMS 0.28 % of the range; fused non-VNNI
        # kernels: max 56 %, RMS 7.7 %.
        diff, scale = np.abs(got[name] - value), np.abs(value).max()
        assert diff.max() < 0.05 * scale and np.sqrt((diff ** 2).mean()) < 0.01 * scale, (name, diff.max() / scale)


@pytest.mark.parametrize("flags, saturate", [
    ("fpu sse2 avx2 fma", True),                    # AVX2 only (e.g. Zen 2/3): VPMADDUBSW path
    ("fpu avx2 avx512f avx512bw", True),            # AVX-512 without VNNI (Skylake-SP)
    ("fpu avx2 avx512f avx512_vnni", False),        # Cascade Lake and later
    ("fpu avx2 avx_vnni", False),                   # Alder Lake
])
def test_int8_saturation_is_read_from_the_cpu_flags(tmp_path, monkeypatch, flags, saturate):
    import platform

    from anomedge.runtime.backends.onnxruntime import int8_kernels_saturate

    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    assert int8_kernels_saturate(str(info)) is saturate
    assert int8_kernels_saturate(str(tmp_path / "missing")) is False  # unknown: leave onnxruntime's default
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert int8_kernels_saturate(str(info)) is False


def test_bad_qdq_fusion_is_an_input_error(variants):
    from anomedge.runtime.backends.onnxruntime import OnnxRuntimeBackend

    with pytest.raises(Exception, match="qdq_fusion 'maybe'"):
        OnnxRuntimeBackend(variants, precision="int8", qdq_fusion="maybe")
