"""PaDiM: Ledoit-Wolf vs scikit-learn, ridge option, channel subset in the graph, float16 factor, runtime parity."""

import numpy as np
import pytest
import torch

from anomedge.benchmark import parity, reference_and_runtime
from anomedge.errors import InputError
from anomedge.models.padim import Padim, PadimConfig, channel_subset, gaussian_fit, ledoit_wolf
from anomedge.runtime.preprocess import read_image


def test_ledoit_wolf_matches_sklearn_per_position():
    from sklearn.covariance import LedoitWolf

    rng = np.random.default_rng(0)
    # 3 positions, 12 samples, 7 channels (N < C regime too: shrinkage matters), correlated data
    x = rng.normal(size=(3, 12, 7)) @ rng.normal(size=(7, 7)) + rng.normal(size=(3, 1, 7))
    mean, cov, shrink = ledoit_wolf(torch.from_numpy(x))
    for p in range(3):
        ref = LedoitWolf().fit(x[p])
        np.testing.assert_allclose(cov[p].numpy(), ref.covariance_, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(mean[p].numpy(), ref.location_, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(float(shrink[p]), ref.shrinkage_, rtol=1e-10)
    assert 0 < float(shrink.min()) < 1


def test_ridge_option_is_sample_covariance_plus_eps():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 20, 5))
    _, cov = gaussian_fit(torch.from_numpy(x), "none", ridge=0.5)
    for p in range(2):
        np.testing.assert_allclose(cov[p].numpy(), np.cov(x[p], rowvar=False) + 0.5 * np.eye(5), rtol=1e-12)
    _, lw = gaussian_fit(torch.from_numpy(x), "ledoit_wolf", ridge=0.0)
    _, lw_r = gaussian_fit(torch.from_numpy(x), "ledoit_wolf", ridge=0.25)
    np.testing.assert_allclose((lw_r - lw).numpy(), np.broadcast_to(0.25 * np.eye(5), (2, 5, 5)), atol=1e-14)


def test_channel_subset_is_seeded_and_sorted():
    a, b, c = channel_subset(152, 100, 0), channel_subset(152, 100, 0), channel_subset(152, 100, 1)
    assert a == b and a != c
    assert a == sorted(set(a)) and len(a) == 100 and 0 <= a[0] and a[-1] < 152
    assert channel_subset(152, 152, 0) is None and channel_subset(152, None, 0) is None


@pytest.mark.parametrize("params, match", [
    ({"n_channels": 0}, "n_channels"), ({"n_channels": 500}, "only 152 channels"), ({"grid_pool": 0}, "grid_pool"),
    ({"shrinkage": "oas"}, "shrinkage"), ({"factor_dtype": "int8"}, "factor_dtype"), ({"ridge": -1.0}, "ridge"),
    ({"shrinkage": "none", "ridge": 0.0}, "singular"),
])
def test_bad_parameters_are_input_errors(params, match):
    with pytest.raises(InputError, match=match):
        Padim(PadimConfig(**params))


def test_unknown_parameter_is_an_input_error():
    with pytest.raises(InputError, match="unknown parameter"):
        Padim.from_params({"n_channel": 10})


@pytest.fixture(scope="module")
def padim_artifacts(tmp_path_factory, elpv_paths):
    from anomedge.export.fit import fit_and_export

    out = {}
    for name, params in {"fp32": {"grid_pool": 1}, "fp16_pool2": {"factor_dtype": "float16", "grid_pool": 2}}.items():
        report = fit_and_export(elpv_paths[:20], "padim", {"image_size": 64, "n_channels": 24, **params},
                                tmp_path_factory.mktemp("padim") / name, holdout=0.2, progress=False)
        out[name] = report.artifact
    return out


@pytest.mark.slow  # fits and exports a real artifact (module fixture)
def test_graph_output_is_already_the_channel_subset(padim_artifacts):
    import onnx

    art = padim_artifacts["fp32"]
    model = onnx.load(str(art.root / "model.onnx"))
    dims = [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert dims[1:] == [24, 8, 8]  # stride 8 at 64 px, 24 of 152 channels
    assert any(n.op_type == "Gather" for n in model.graph.node)
    assert art.array("mean.npy").shape == (64, 24) and art.array("factor.npy").shape == (64, 24, 24)
    assert art.metadata.model["channel_index"] == channel_subset(152, 24, 0)


@pytest.mark.slow  # fits and exports a real artifact (module fixture)
def test_factor_is_the_inverse_covariance(padim_artifacts, elpv_paths):
    """L Lᵀ Σ = I, with Σ refitted from the same training features."""
    from anomedge.export.fit import split_holdout
    from anomedge.models.features import extract

    art = padim_artifacts["fp32"]
    det = Padim(PadimConfig(image_size=64, n_channels=24, grid_pool=1))
    fit_paths = split_holdout(elpv_paths[:20], 0.2)[0]  # as fit_and_export split them
    feats = extract(det.graph(), fit_paths, det.input_spec(), 16, False)
    n, c, h, w = feats.shape
    _, cov = gaussian_fit(torch.from_numpy(feats.reshape(n, c, h * w)).permute(2, 0, 1), "ledoit_wolf", 0.01)
    factor = art.array("factor.npy").astype(np.float64)
    eye = factor @ factor.transpose(0, 2, 1) @ cov.numpy()
    np.testing.assert_allclose(eye, np.broadcast_to(np.eye(c), eye.shape), atol=2e-3)


@pytest.mark.slow  # fits and exports a real artifact (module fixture)
@pytest.mark.parametrize("name", ["fp32", "fp16_pool2"])
def test_runtime_matches_torch_reference(padim_artifacts, elpv_paths, name):
    art = padim_artifacts[name]
    frames = [read_image(p) for p in elpv_paths[20:32]]
    ref_scores, ref_maps, scores, maps, threshold = reference_and_runtime(art, frames)
    p = parity(ref_scores, ref_maps, scores, maps, threshold)
    assert p.max_rel_score_diff < 1e-4, p
    assert p.max_map_diff < 1e-3, p
    assert p.decision_agreement == 1.0
    assert maps.shape == (12, 64, 64) and np.ptp(scores) > 0


@pytest.mark.slow  # fits and exports a real artifact (module fixture)
def test_float16_factor_halves_the_artifact_and_pool_quarters_it(padim_artifacts):
    a, b = padim_artifacts["fp32"].array("factor.npy"), padim_artifacts["fp16_pool2"].array("factor.npy")
    assert a.dtype == np.float32 and b.dtype == np.float16
    assert b.shape == (16, 24, 24)  # 8×8 grid pooled by 2
    assert b.nbytes * 8 == a.nbytes
