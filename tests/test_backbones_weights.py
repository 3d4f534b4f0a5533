"""EfficientNet-Lite0 package weights on timm: every key maps, and the network really classifies."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

from anomedge.errors import InputError  # noqa: E402
from anomedge.models.backbones import BackboneSpec, build_backbone, load_weights  # noqa: E402


def test_chelsea_is_a_cat(chelsea_bgr):
    import cv2

    model = timm.create_model("tf_efficientnet_lite0").eval()
    load_weights(model, "efficientnet-lite0")  # strict: raises on any missing / unexpected key
    rgb = cv2.resize(chelsea_bgr[:, :, ::-1].astype(np.float32), (224, 224), interpolation=cv2.INTER_LINEAR)
    x = torch.from_numpy(((rgb / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)[None].astype(np.float32))
    with torch.no_grad():
        top5 = model(x).topk(5).indices[0].tolist()
    assert set(top5) & set(range(281, 286)), top5  # ImageNet 281-285: tabby, tiger cat, Persian, Siamese, Egyptian cat


def test_truncated_extractor_matches_full_model_blocks():
    spec = BackboneSpec()
    extractor = build_backbone(spec)
    assert extractor.channels == [40, 112] and extractor.strides == [8, 16]
    full = timm.create_model("tf_efficientnet_lite0").eval()
    load_weights(full, "efficientnet-lite0")
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        ours = extractor(x)
        h = full.bn1(full.conv_stem(x))
        ref = []
        for i, block in enumerate(full.blocks[:5]):
            h = block(h)
            if i in (2, 4):
                ref.append(h)
    for a, b in zip(ours, ref):
        assert a.shape == b.shape
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)


def test_spec_round_trip_records_weight_hash():
    spec = BackboneSpec().with_weights_hash()
    assert len(spec.weights_sha256) == 64
    assert BackboneSpec.from_dict(spec.to_dict()) == spec


def test_user_weight_files_load_without_pickle(tmp_path):
    from safetensors.torch import save_file

    model = timm.create_model("tf_efficientnet_lite0").eval()
    load_weights(model, "efficientnet-lite0")
    save_file(model.state_dict(), tmp_path / "w.safetensors")
    torch.save(model.state_dict(), tmp_path / "w.pth")
    for name in ("w.safetensors", "w.pth"):
        other = timm.create_model("tf_efficientnet_lite0").eval()
        load_weights(other, str(tmp_path / name))
        np.testing.assert_array_equal(other.conv_stem.weight.detach().numpy(), model.conv_stem.weight.detach().numpy())


def test_bad_weight_files_are_named(tmp_path):
    model = timm.create_model("tf_efficientnet_lite0")
    corrupt = tmp_path / "broken.pth"
    corrupt.write_bytes(b"\x80\x04garbage")
    with pytest.raises(InputError, match="broken.pth: cannot read weights"):
        load_weights(model, str(corrupt))
    with pytest.raises(InputError, match="no such file"):
        load_weights(model, str(tmp_path / "absent.safetensors"))
    pickled = tmp_path / "object.pth"
    torch.save({"conv_stem.weight": object()}, pickled)
    with pytest.raises(InputError, match="object.pth: cannot read weights"):
        load_weights(model, str(pickled))
    wrong = tmp_path / "mobilenet.safetensors"
    from safetensors.torch import save_file

    save_file(timm.create_model("mobilenetv3_small_050").state_dict(), wrong)
    with pytest.raises(InputError, match="does not fit"):
        load_weights(model, str(wrong))
