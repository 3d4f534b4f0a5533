import numpy as np
import pytest

from anomedge.scoring.postprocess import anomaly_maps, image_scores

torch = pytest.importorskip("torch")
from anomedge.runtime.backends.torch_ref import _gaussian_blur, _reduce  # noqa: E402


@pytest.mark.parametrize("grid, size, sigma", [((28, 28), (224, 224), 4.0), ((7, 9), (56, 72), 2.0), ((32, 32), (256, 256), 0.0)])
def test_maps_match_torch_reference(grid, size, sigma):
    rng = np.random.default_rng(0)
    patch = rng.gamma(2.0, 1.0, size=(3, *grid)).astype(np.float32)
    ours = anomaly_maps(patch, size, sigma)
    ref = torch.nn.functional.interpolate(torch.from_numpy(patch)[:, None], size=size, mode="bilinear", align_corners=False)
    if sigma > 0:
        ref = _gaussian_blur(ref, sigma)
    ref = ref[:, 0].numpy()
    scale = ref.max() - ref.min()
    np.testing.assert_allclose(ours, ref, atol=1e-5 * scale, rtol=0)


@pytest.mark.parametrize("reduction", [{"name": "max"}, {"name": "mean"}, {"name": "top_fraction_mean", "fraction": 0.05}])
def test_reductions_match_naive_and_torch(reduction):
    patch = np.random.default_rng(1).normal(size=(4, 28, 28)).astype(np.float32)
    flat = np.sort(patch.reshape(4, -1), axis=1)[:, ::-1]
    naive = {"max": flat[:, 0], "mean": flat.mean(axis=1), "top_fraction_mean": flat[:, :39].mean(axis=1)}[reduction["name"]]
    np.testing.assert_allclose(image_scores(patch, reduction), naive, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(_reduce(torch.from_numpy(patch), reduction).numpy(), naive, rtol=1e-6, atol=1e-6)
