"""SimpleNet: the truncated L1 loss, seeded training, learning on a tiny task, fit → export → onnxruntime vs
the PyTorch reference, and the graph rebuilt from metadata + weights.safetensors."""

import numpy as np
import pytest
import torch

from anomedge.benchmark import parity, reference_and_runtime
from anomedge.calibrate.metrics import auroc
from anomedge.errors import ArtifactError, InputError
from anomedge.export.fit import fit_and_export
from anomedge.models.simplenet import SimpleNet, SimpleNetConfig, SimpleNetHead, truncated_l1
from anomedge.runtime.pipeline import Inspector
from anomedge.runtime.preprocess import read_image

TINY = {"image_size": 64, "hidden": 32, "epochs": 2, "batch_size": 256, "threads": 1}


@pytest.fixture(scope="module")
def brick():
    from anomedge.datasets import load_dataset

    return load_dataset("synthetic:brick")


@pytest.fixture(scope="module")
def sn_artifact(tmp_path_factory, brick):
    out = tmp_path_factory.mktemp("simplenet") / "art"
    return fit_and_export(brick.train[:16], "simplenet", TINY, out, holdout=0.25, progress=False).artifact


def test_truncated_l1_reference_numbers():
    true, fake = torch.tensor([1.0, 0.2]), torch.tensor([-1.0, 0.0])
    # true: max(0, 0.5 − 1) = 0, max(0, 0.5 − 0.2) = 0.3 → 0.15; fake: 0, max(0, 0.5 + 0) = 0.5 → 0.25
    assert float(truncated_l1(true, fake, 0.5)) == pytest.approx(0.40, abs=1e-7)
    assert float(truncated_l1(torch.tensor([0.5]), torch.tensor([-0.5]), 0.5)) == 0.0


def test_head_map_is_softplus_of_minus_the_discriminator():
    torch.manual_seed(0)
    head = SimpleNetHead(6, 8).eval()
    head.mean.copy_(torch.randn(6))
    head.std.copy_(torch.rand(6) + 0.5)
    feats = torch.randn(2, 6, 3, 4)
    x = feats.permute(0, 2, 3, 1).double()
    z = (x - head.mean.double()) / head.std.double()
    a = z @ head.adaptor.weight.double().T + head.adaptor.bias.double()
    l1, act, l2 = head.discriminator
    h = torch.nn.functional.leaky_relu(a @ l1.weight.double().T + l1.bias.double(), 0.2)
    s = (h @ l2.weight.double().T + l2.bias.double())[..., 0]
    ref = torch.log1p(torch.exp(-s))[:, None]  # naive float64 softplus(−s)
    with torch.no_grad():
        out = head(feats)
    assert out.shape == (2, 1, 3, 4)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6)


def _low_rank_patches(n: int, d: int, seed: int) -> torch.Tensor:
    """(n, d) points of one fixed 4-d subspace; ``seed`` draws the coefficients."""
    basis = torch.randn(4, d, generator=torch.Generator().manual_seed(123))
    return (torch.randn(n, 4, generator=torch.Generator().manual_seed(seed)) @ basis).float()


def test_training_is_seeded():
    def run(seed):
        det = SimpleNet(SimpleNetConfig(**{**TINY, "seed": seed}), progress=False)
        det.fit_patches(_low_rank_patches(1024, det.channels, 0), 4)
        return det.history.step_loss, {k: v.clone() for k, v in det.head.state_dict().items()}

    (loss_a, state_a), (loss_b, state_b), (loss_c, _) = run(0), run(0), run(1)
    assert loss_a == loss_b and len(loss_a) == 2 * 4
    for k in state_a:
        torch.testing.assert_close(state_a[k], state_b[k], rtol=0, atol=0)
    assert loss_a != loss_c


def test_it_learns_the_good_manifold():
    """Good patches lie in a 4-d subspace of D = 152; after 64 steps, unseen points pushed off it score higher
    than unseen points on it (an untrained head: ≈ 0.5)."""
    det = SimpleNet(SimpleNetConfig(**{**TINY, "epochs": 8, "noise_std": 1.0, "lr": 1e-2}), progress=False)
    good = _low_rank_patches(2048, det.channels, 0)
    det.fit_patches(good, 8)
    assert det.history.epoch_loss[-1] < 0.2 * det.history.epoch_loss[0], det.history.epoch_loss
    test_good = _low_rank_patches(128, det.channels, 1)  # unseen, same subspace
    off = test_good + 0.5 * good.std(0) * torch.randn(128, det.channels, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        scores = det.head(torch.cat([test_good, off])[:, :, None, None])[:, 0, 0, 0].numpy()
    assert auroc(np.r_[np.zeros(128), np.ones(128)], scores) > 0.95


@pytest.mark.slow  # fits on 64 px images through the real backbone (~15 s)
def test_drawn_defects_score_higher_than_good_on_a_texture(brick):
    det = SimpleNet(SimpleNetConfig(**{**TINY, "epochs": 6, "noise_std": 1.0, "lr": 1e-2, "reduction": {"name": "max"}}),
                    progress=False).fit(brick.train[:24])
    from anomedge.models.features import extract

    feats = extract(det.graph(), list(brick.test), det.input_spec(), 16, False)  # (N,1,h,w) error maps
    scores = feats.reshape(len(feats), -1).max(1)
    assert auroc(brick.test_labels, scores) > 0.7  # measured 0.80; an untrained head ≈ 0.5


@pytest.mark.slow  # fits and exports a real artifact (module fixture; ~20 s quiet, 70–110 s on the contended box)
def test_runtime_matches_torch_reference(sn_artifact, brick):
    frames = [read_image(p) for p in brick.test[:6]]
    ref_scores, ref_maps, scores, maps, threshold = reference_and_runtime(sn_artifact, frames)
    p = parity(ref_scores, ref_maps, scores, maps, threshold)
    # float32 graph on onnxruntime vs eager torch: relative score error ≤ 1e-5, map ≤ 1e-4 (normalised)
    assert p.max_rel_score_diff < 1e-5, p
    assert p.max_map_diff < 1e-4, p
    assert p.decision_agreement == 1.0
    assert maps.shape == (6, 64, 64) and np.ptp(scores) > 0
    meta = sn_artifact.metadata
    assert meta.scoring["kind"] == "reconstruction" and meta.outputs["names"] == ["error"]
    assert meta.outputs["error"]["shape"] == ["N", 1, 8, 8]
    assert "weights.safetensors" in meta.files and (sn_artifact.root / "loss_curve.png").is_file()
    assert meta.model["fit"]["history"]["steps"] > 0


@pytest.mark.slow  # fits and exports a real artifact (module fixture)
def test_build_graph_from_metadata_reproduces_the_graph(sn_artifact, brick):
    from safetensors.torch import load_file

    meta = sn_artifact.metadata
    graph = SimpleNet.build_graph(meta.model, sn_artifact)
    stored = load_file(str(sn_artifact.path("weights.safetensors")))
    state = graph.head.state_dict()
    assert set(stored) == set(state) and {"mean", "std"} <= set(stored)
    for name, value in stored.items():
        torch.testing.assert_close(state[name], value, rtol=0, atol=0)
    with Inspector(sn_artifact, "onnxruntime") as ort:
        x = ort.stages.preprocess([read_image(brick.test[0])])
        onnx_error = ort.stages.infer(x)["error"]
    with torch.no_grad():
        torch_error = graph(torch.from_numpy(np.asarray(x))).numpy()
    np.testing.assert_allclose(onnx_error, torch_error, rtol=1e-4, atol=1e-5)
    with pytest.raises(ArtifactError, match="weights.safetensors"):
        SimpleNet.build_graph({**meta.model, "architecture": {**meta.model["architecture"], "hidden": 7}}, sn_artifact)
    with pytest.raises(ArtifactError, match="pass the artifact"):
        SimpleNet.build_graph(meta.model)


@pytest.mark.parametrize("params, match", [
    ({"noise_std": 0}, "noise_std 0"),
    ({"margin": -1}, "margin -1"),
    ({"hidden": 0}, "hidden 0"),
    ({"augment": "spin"}, "unknown view"),
    ({"reduction": {"name": "median"}}, "reduction"),
    ({"epochs": 0}, "epochs 0"),
])
def test_bad_parameters_are_input_errors(params, match):
    with pytest.raises(InputError, match=match):
        SimpleNet.from_params({**TINY, **params}, progress=False)


def test_fit_patches_checks_the_shape():
    det = SimpleNet(SimpleNetConfig(**TINY), progress=False)
    with pytest.raises(InputError, match="expected \\(M, 152\\)"):
        det.fit_patches(torch.zeros(10, 3), 1)
