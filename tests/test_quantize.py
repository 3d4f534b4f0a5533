"""FP16 / INT8 variants through the library API on a real artifact: node exclusion honoured (mixed
precision), typos and failures refused with metadata and existing variants untouched, variants run
through the onnxruntime backend's ``model_file``."""

import shutil

import numpy as np
import onnx
import pytest

from anomedge.artifact import Artifact
from anomedge.errors import InputError
from anomedge.export.precision import add_variant, quantizable_nodes
from anomedge.runtime.pipeline import Inspector
from anomedge.runtime.preprocess import read_image


@pytest.fixture(scope="module")
def art(tiny_artifact, tmp_path_factory):
    root = tmp_path_factory.mktemp("quantize") / "art"
    shutil.copytree(tiny_artifact.root, root)
    return root


@pytest.fixture(scope="module")
def first_conv(art):
    return quantizable_nodes(art / "model.onnx")[0]


def node(model_path, name):
    model = onnx.load(str(model_path))
    return model, next(n for n in model.graph.node if n.name == name)


def scores(artifact, frames, **options):
    with Inspector(artifact, "onnxruntime", **options) as insp:
        return np.concatenate([insp.inspect([f]).scores for f in frames])


def test_fp16_keeps_named_node_in_float32(art, first_conv, elpv_paths):
    path = add_variant(art, "fp16", exclude=[first_conv])
    model, conv = node(path, first_conv)
    casts = {o: onnx.helper.get_attribute_value(n.attribute[0]) for n in model.graph.node if n.op_type == "Cast"
             for o in n.output}
    # the excluded conv computes in float32 (its inputs cast to float32); every other conv in float16
    float32_convs = [n.name for n in model.graph.node if n.op_type == "Conv"
                     and casts.get(n.input[1]) == onnx.TensorProto.FLOAT]
    assert float32_convs == [first_conv]
    assert casts.get(conv.input[0]) == onnx.TensorProto.FLOAT
    artifact = Artifact.load(art)
    assert artifact.metadata.model["variant_params"]["fp16"]["exclude"] == [first_conv]
    frames = [read_image(p) for p in elpv_paths[20:24]]
    np.testing.assert_allclose(scores(artifact, frames, precision="fp16"), scores(artifact, frames), rtol=1e-2)


def test_mixed_int8_keeps_named_conv_float_and_runs_by_model_file(art, first_conv, elpv_paths):
    path = add_variant(art, "int8", elpv_paths[:8], "percentile", exclude=[first_conv])
    model, conv = node(path, first_conv)
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    assert producers.get(conv.input[1]) != "DequantizeLinear"  # float weight straight from an initializer
    others = [n for n in model.graph.node if n.op_type == "Conv" and n.name != first_conv]
    assert all(producers.get(n.input[1]) == "DequantizeLinear" for n in others)
    artifact = Artifact.load(art)  # the variant is hashed and verifies
    assert artifact.metadata.model["variants"]["int8"] == "model.int8.onnx"
    frames = [read_image(p) for p in elpv_paths[24:28]]
    by_precision = scores(artifact, frames, precision="int8")
    np.testing.assert_array_equal(scores(artifact, frames, model_file="model.int8.onnx"), by_precision)
    np.testing.assert_allclose(by_precision, scores(artifact, frames), rtol=0.15)  # INT8: a few % measured


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_unknown_node_is_refused_and_nothing_changes(art, precision, elpv_paths):
    before = {p.name: p.read_bytes() for p in art.iterdir() if p.is_file()}
    with pytest.raises(InputError, match=r"model.onnx: no node named conv_typo; --exclude takes node names"):
        add_variant(art, precision, elpv_paths[:4], exclude=["conv_typo"])
    assert {p.name: p.read_bytes() for p in art.iterdir() if p.is_file()} == before  # no stray file, same bytes


def test_failed_requantisation_keeps_the_existing_variant(art, tmp_path, elpv_paths):
    if "int8" not in Artifact.load(art).metadata.model.get("variants", {}):
        add_variant(art, "int8", elpv_paths[:4])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    before = {p.name: p.read_bytes() for p in art.iterdir() if p.is_file()}
    with pytest.warns(UserWarning, match="broken.png"), pytest.raises(InputError, match="no readable calibration"):
        add_variant(art, "int8", [broken])
    assert {p.name: p.read_bytes() for p in art.iterdir() if p.is_file()} == before
    Artifact.load(art)


def activation_scales(model_path):
    model = onnx.load(str(model_path))
    init = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    return {n.input[0]: float(init[n.input[1]]) for n in model.graph.node if n.op_type == "QuantizeLinear"
            and init[n.input[1]].ndim == 0}


@pytest.mark.slow
def test_entropy_calibration_is_not_minmax(tiny_artifact, tmp_path, elpv_paths):
    """onnxruntime's own entropy calibrator degenerates to MinMax (128 bins for 128 levels); ours must
    clip some activation ranges (smaller scales), never widen them."""
    scales = {}
    for method in ("minmax", "entropy"):
        root = tmp_path / method
        shutil.copytree(tiny_artifact.root, root)
        scales[method] = activation_scales(add_variant(root, "int8", elpv_paths[:6], method))
    assert scales["minmax"].keys() == scales["entropy"].keys()
    ratio = np.array([scales["entropy"][k] / scales["minmax"][k] for k in scales["minmax"]])
    assert (ratio < 0.98).sum() >= 5 and (ratio <= 1 + 1e-6).all()


def test_unknown_precision_or_method(art, elpv_paths):
    with pytest.raises(InputError, match="precision 'int4'"):
        add_variant(art, "int4")
    with pytest.raises(InputError, match="calibration method 'kl'"):
        add_variant(art, "int8", elpv_paths[:2], method="kl")


def test_int8_variant_is_symmetric_with_float_biases(tiny_artifact, tmp_path, elpv_paths):
    """TensorRT accepts only symmetric INT8 Q/DQ: every zero point is 0 and no bias is quantised to
    int32 (quantize_static's defaults give both: measured 86 non-zero zero points, 33 int32 biases)."""
    root = tmp_path / "art"
    shutil.copytree(tiny_artifact.root, root)
    model = onnx.load(str(add_variant(root, "int8", elpv_paths[:8])))
    init = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert len(qdq) > 20
    zero_points = [init[n.input[2]] for n in qdq if len(n.input) > 2 and n.input[2]]
    assert len(zero_points) == len(qdq)  # every pair states its zero point ...
    assert all(zp.dtype == np.int8 and not zp.any() for zp in zero_points)  # ... and it is 0, int8
    assert not [n.name for n in qdq if n.op_type == "DequantizeLinear" and n.input[0] in init
                and init[n.input[0]].dtype == np.int32]
    biases = [n.input[2] for n in model.graph.node if n.op_type == "Conv" and len(n.input) > 2]
    assert biases and all(init[b].dtype == np.float32 for b in biases)  # straight from float initializers
