"""ViT patch features (random-init weights: no model hub here): shapes, token counts, whitening, parity.

Every ViT here is random-init (``weights="none"``, seeded) and truncated (``model_kwargs``) so the tests
are quick; they check shapes, export and runtime-vs-reference parity, not accuracy.
"""

import numpy as np
import pytest
import torch

from anomedge.benchmark import parity, reference_and_runtime
from anomedge.errors import InputError
from anomedge.models.vit import ViTSpec, build_vit, spec_for_model, token_count
from anomedge.models.vit_detector import ViTConfig, ViTDetector, whitening
from anomedge.runtime.preprocess import read_image

TINY = {"weights": "none", "image_size": 56, "model_kwargs": {"depth": 2}, "blocks": [0, 1]}


def test_mae_keeps_every_patch_at_inference():
    spec = spec_for_model("vit_base_patch16_224.mae", weights="none", image_size=64, model_kwargs={"depth": 1})
    extractor = build_vit(spec)
    assert token_count(extractor, 64) == 1 + (64 // 16) ** 2  # class token + all 16 patches, none masked
    assert extractor(torch.zeros(1, 3, 64, 64)).shape == (1, 768, 4, 4)


def test_dinov2_grid_drops_class_token_and_concatenates_blocks():
    spec = spec_for_model("vit_small_patch14_dinov2", **{k: v for k, v in TINY.items() if k != "blocks"},
                          blocks=(0, -1))
    extractor = build_vit(spec)
    assert token_count(extractor, 56) == 1 + 16
    out = extractor(torch.zeros(2, 3, 56, 56))
    assert out.shape == (2, 2 * 384, 4, 4)


def test_swin_stages_are_upsampled_to_the_finest_grid():
    spec = spec_for_model("swin_tiny_patch4_window7_224", weights="none", image_size=112, blocks=(0, 1),
                          model_kwargs={"depths": (1, 1), "num_heads": (3, 6)})
    out = build_vit(spec)(torch.zeros(1, 3, 112, 112))
    assert out.shape == (1, 96 + 192, 28, 28)


def test_random_init_is_reproducible_for_the_reference_rebuild():
    spec = ViTSpec(**{**TINY, "blocks": (1,), "model_kwargs": {"depth": 2}})
    x = torch.randn(1, 3, 56, 56)
    torch.testing.assert_close(build_vit(spec)(x), build_vit(spec)(x), rtol=0, atol=0)


@pytest.mark.parametrize("spec, match", [
    (ViTSpec(weights="none", image_size=50, model_kwargs={"depth": 1}), "multiple of the patch size 14"),
    (ViTSpec(weights="none", image_size=56, blocks=(3,), model_kwargs={"depth": 2}), r"blocks \[3\]"),
    (ViTSpec(weights="/nonexistent/w.safetensors", image_size=56), "no such file"),
    (ViTSpec(name="not_a_model", weights="none", image_size=56), "not_a_model"),
])
def test_bad_specs_are_input_errors(spec, match):
    with pytest.raises(InputError, match=match):
        build_vit(spec)


@pytest.mark.parametrize("params, match", [
    ({"level": "pixel"}, "level"), ({"scoring": "svm"}, "scoring"), ({"metric": "l1"}, "metric"),
    ({"k": 0}, "k 0"), ({"coreset_fraction": 0.0}, "coreset_fraction"), ({"scoring": "mahalanobis", "k": 2}, "k applies"),
])
def test_bad_detector_parameters_are_input_errors(params, match):
    with pytest.raises(InputError, match=match):
        ViTDetector(ViTConfig(**{**TINY, **params}))


def test_weights_file_is_loaded_through_the_timm_filter(tmp_path):
    from safetensors.torch import save_file

    src = build_vit(ViTSpec(**{**TINY, "blocks": (1,)}))
    state = {k: v.contiguous() for k, v in src.model.state_dict().items()}
    # perturb so that the loaded weights differ from the seeded random init
    state = {k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}
    path = tmp_path / "w.safetensors"
    save_file(state, str(path))
    spec = ViTSpec(**{**TINY, "blocks": (1,), "weights": str(path)}).with_weights_hash()
    loaded = build_vit(spec)
    assert spec.weights_sha256 and len(spec.weights_sha256) == 64
    for k, v in loaded.model.state_dict().items():
        torch.testing.assert_close(v, state[k])


def test_whitening_norm_is_the_mahalanobis_distance():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 6)) @ rng.normal(size=(6, 6)) + 3.0
    w, b = whitening(x.astype(np.float32), pca_dim=6, shrinkage="none", ridge=0.0)
    q = rng.normal(size=(7, 6)) + 3.0
    mu, cov = x.mean(0), np.cov(x, rowvar=False)
    d = q - mu
    oracle = np.einsum("nc,cd,nd->n", d, np.linalg.inv(cov), d)
    np.testing.assert_allclose(((q @ w.T.astype(np.float64) + b) ** 2).sum(1), oracle, rtol=1e-4)
    with pytest.raises(InputError, match="pca_dim 7 > feature dimension 6"):
        whitening(x, pca_dim=7)


CASES = {
    "patch-cosine": {},
    "patch-maha": {"scoring": "mahalanobis", "pca_dim": 32},
    "image-l2-k2": {"level": "image", "metric": "l2", "k": 2},
    "image-maha": {"level": "image", "scoring": "mahalanobis", "pca_dim": 8},
}


@pytest.fixture(scope="module")
def vit_artifacts(tmp_path_factory, elpv_paths):
    from anomedge.export.fit import fit_and_export

    return {name: fit_and_export(elpv_paths[:20], "vit", {**TINY, **params}, tmp_path_factory.mktemp("vit") / name,
                                 holdout=0.2, progress=False).artifact
            for name, params in CASES.items()}


@pytest.mark.slow  # fits and exports a real artifact (module fixture)
@pytest.mark.parametrize("name", list(CASES))
def test_runtime_matches_torch_reference(vit_artifacts, elpv_paths, name):
    art = vit_artifacts[name]
    frames = [read_image(p) for p in elpv_paths[20:30]]
    ref_scores, ref_maps, scores, maps, threshold = reference_and_runtime(art, frames)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-4)
    assert ((scores > threshold) == (ref_scores > threshold)).all()
    assert maps.shape == (10, 56, 56) and np.ptp(scores) > 0
    if name.startswith("patch"):
        p = parity(ref_scores, ref_maps, scores, maps, threshold)
        assert p.max_map_diff < 1e-3, p
    else:  # pooled token: one score per image, a constant map
        np.testing.assert_allclose(maps, ref_maps, rtol=1e-4)


@pytest.mark.slow  # fits and exports a real artifact (module fixture)
def test_artifact_shapes(vit_artifacts):
    assert vit_artifacts["patch-cosine"].metadata.outputs["features"]["shape"] == ["N", 768, 4, 4]
    bank = vit_artifacts["patch-cosine"].array("bank.npy")
    np.testing.assert_allclose(np.linalg.norm(bank, axis=1), 1.0, rtol=1e-5)  # cosine: normalised in the graph
    maha = vit_artifacts["patch-maha"]
    assert maha.array("whiten.npy").shape == (32, 768) and maha.array("bank.npy").shape == (1, 32)
    assert not maha.array("bank.npy").any()
    assert vit_artifacts["image-maha"].metadata.outputs["features"]["shape"] == ["N", 8, 1, 1]


@pytest.mark.slow  # fits and exports a real artifact (module fixture)
def test_exported_vit_takes_any_batch(vit_artifacts, elpv_paths):
    """torch.export specialises a size-1 example batch; a ViT graph (class token expanded to the batch)
    then came out fixed at batch 1. A batch of 3 must give the three single-frame answers."""
    import onnx

    from anomedge.runtime.pipeline import Inspector

    art = vit_artifacts["patch-cosine"]
    dim = onnx.load(str(art.path("model.onnx"))).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_param and not dim.HasField("dim_value")
    frames = [read_image(p) for p in elpv_paths[20:23]]
    with Inspector(art, "onnxruntime") as insp:
        together = insp.inspect(frames)
        alone = [insp.inspect([f]) for f in frames]
    np.testing.assert_allclose(together.scores, np.concatenate([a.scores for a in alone]), rtol=1e-5)
    np.testing.assert_allclose(together.maps, np.concatenate([a.maps for a in alone]), rtol=1e-4, atol=1e-5)


def test_export_refuses_a_graph_that_fixes_the_batch(tmp_path):
    from anomedge.artifact import InputSpec
    from anomedge.export.onnx import export_onnx

    class FixedBatch(torch.nn.Module):  # reshapes to a literal batch of 2: the export cannot stay dynamic
        def forward(self, x):
            return x.reshape(2, 3, 8, 8) * 2

    with pytest.raises(InputError, match="fixes the batch"):
        export_onnx(FixedBatch(), InputSpec(name="image", height=8, width=8), tmp_path / "m.onnx", ["y"])
