"""Masked autoencoder: complementary inference masks cover every patch once, a deterministic graph,
onnxruntime vs PyTorch reference, DyT vs LayerNorm, block-wise training masks, parameter errors."""

import numpy as np
import pytest
import torch

from anomedge.benchmark import parity, score_frames
from anomedge.errors import InputError
from anomedge.export.fit import fit_and_export
from anomedge.models.mae import DyT, MaeConfig, MaskedAutoencoder, block_mask, inference_masks
from anomedge.models.reconstruction import load_tensor
from anomedge.models.training import train
from anomedge.runtime.pipeline import Inspector
from anomedge.runtime.preprocess import read_image

TINY = {"image_size": 32, "patch_size": 8, "dim": 32, "depth": 2, "heads": 2, "decoder_dim": 32,
        "epochs": 2, "batch_size": 4, "amp": "fp32", "threads": 1}


@pytest.fixture(scope="module")
def mae_artifact(tmp_path_factory, elpv_paths):
    out = tmp_path_factory.mktemp("mae") / "art"
    return fit_and_export(elpv_paths[:12], "mae", {**TINY, "norm": "dyt"}, out, holdout=0.25, progress=False).artifact


@pytest.mark.parametrize("grid, block, stride", [(4, 1, 2), (4, 2, 2), (8, 2, 2), (8, 1, 3), (7, 2, 2), (16, 3, 2)])
def test_inference_masks_cover_every_patch_exactly_once(grid, block, stride):
    masks = inference_masks(grid, block, stride).numpy()
    assert masks.shape == (stride * stride, grid * grid)
    np.testing.assert_array_equal(masks.sum(axis=0), np.ones(grid * grid))
    assert (masks.sum(axis=1) > 0).all()


def test_inference_masks_refuse_empty_passes():
    with pytest.raises(InputError, match="eval_block or eval_stride"):
        inference_masks(4, 4, 2)


def test_reconstruction_takes_each_patch_from_its_one_masked_pass():
    model = MaskedAutoencoder(MaeConfig(**TINY)).module
    calls = []

    def fake_predict(image, mask):  # each pass "predicts" 1 on the patches it masks, 0 elsewhere
        calls.append(mask.shape)
        return mask[:, :, None].expand(-1, -1, model.patch * model.patch * model.channels)

    model.predict = fake_predict
    recon = model.reconstruct(torch.zeros(3, 3, 32, 32))
    np.testing.assert_array_equal(recon.numpy(), np.ones((3, 3, 32, 32)))
    assert calls == [(3 * 4, 16)]  # one batched run of N·K passes


def test_graph_is_deterministic():
    torch.manual_seed(1)
    module = MaskedAutoencoder(MaeConfig(**TINY)).module.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        a, b = module(x), module(x)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=0, atol=0)
    with torch.inference_mode():  # batch independence: an image's map does not depend on its neighbours
        single = module(x[:1])[0]
    torch.testing.assert_close(single, a[0][:1], rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # fits and exports a real artifact (module fixture)
def test_runtime_matches_torch_reference_and_repeats(mae_artifact, elpv_paths):
    frames = [read_image(p) for p in elpv_paths[12:20]]
    with Inspector(mae_artifact, "torch") as ref, Inspector(mae_artifact, "onnxruntime") as ort:
        ref_scores, ref_maps = score_frames(ref, frames)
        scores, maps = score_frames(ort, frames)
        again, again_maps = score_frames(ort, frames)
        threshold = ort.threshold
    p = parity(ref_scores, ref_maps, scores, maps, threshold)
    assert p.max_rel_score_diff < 1e-4, p
    assert p.max_map_diff < 1e-3, p
    assert p.decision_agreement == 1.0
    np.testing.assert_array_equal(again, scores)
    np.testing.assert_array_equal(again_maps, maps)
    assert maps.shape == (8, 32, 32) and np.ptp(scores) > 0
    assert mae_artifact.metadata.model["architecture"]["norm"] == "dyt"


@pytest.mark.slow  # fits and exports a real artifact (module fixture)
def test_weights_round_trip(mae_artifact):
    from safetensors.torch import load_file

    module = MaskedAutoencoder.build_graph(mae_artifact.metadata.model, mae_artifact)
    stored = load_file(str(mae_artifact.path("weights.safetensors")))
    assert set(stored) == set(module.state_dict())
    assert "eval_masks" not in stored and "pos_fixed" not in stored  # rebuilt from the architecture
    for name, value in stored.items():
        torch.testing.assert_close(module.state_dict()[name], value, rtol=0, atol=0)


def test_dyt_and_layernorm_switch():
    dyt = MaskedAutoencoder(MaeConfig(**TINY, norm="dyt")).module
    ln = MaskedAutoencoder(MaeConfig(**TINY, norm="layernorm")).module
    kinds = lambda m: {type(x).__name__ for x in m.modules()}  # noqa: E731
    assert "DyT" in kinds(dyt) and "LayerNorm" not in kinds(dyt)
    assert "LayerNorm" in kinds(ln) and "DyT" not in kinds(ln)
    norm = DyT(4, alpha=0.7)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0, -1.0, 0.5]))
        norm.bias.copy_(torch.tensor([0.0, 0.1, 0.2, 0.3]))
    x = torch.randn(5, 4)
    np.testing.assert_allclose(norm(x).detach().numpy(),
                               (norm.weight * torch.tanh(0.7 * x) + norm.bias).detach().numpy(), rtol=1e-6)
    assert {n for n, _ in norm.named_parameters()} == {"alpha", "weight", "bias"}


def test_block_masks_reach_the_ratio_and_are_seeded():
    masks = [block_mask(8, 0.4, torch.Generator().manual_seed(s)) for s in range(20)]
    counts = [int(m.sum()) for m in masks]
    assert min(counts) >= round(0.4 * 64) and max(counts) < 64
    torch.testing.assert_close(block_mask(8, 0.4, torch.Generator().manual_seed(3)), masks[3])
    # block-wise: most masked patches have a masked 4-neighbour
    m = masks[0].view(8, 8)
    padded = torch.nn.functional.pad(m.float()[None, None], (1, 1, 1, 1))[0, 0]
    neighbours = padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:]
    assert float((neighbours[m] > 0).float().mean()) > 0.8


def test_training_lowers_the_masked_loss(elpv_paths):
    detector = MaskedAutoencoder(MaeConfig(**{**TINY, "epochs": 10, "lr": 3e-3}), progress=False)
    data = load_tensor(elpv_paths[:8], detector.input_spec())
    history = train(detector.module, data, detector.loss, detector.settings(), progress=False)
    assert np.mean(history.epoch_loss[-2:]) < 0.6 * history.epoch_loss[0], history.epoch_loss


@pytest.mark.parametrize("params, match", [
    ({"image_size": 36}, "not a multiple of patch_size"),
    ({"norm": "rmsnorm"}, "norm 'rmsnorm'"),
    ({"aggregate": [0, 5]}, "aggregate"),
    ({"eval_stride": 4}, "eval_block or eval_stride"),
    ({"mask_ratio": 1.0}, "mask_ratio 1.0"),
    ({"dim": 30}, "dim 30"),
    ({"depth": 0}, "depth 0"),
    ({"lr": 0}, "lr 0"),
])
def test_bad_parameters_are_input_errors(params, match):
    with pytest.raises(InputError, match=match):
        MaskedAutoencoder.from_params({**TINY, **params})
