"""The onnxruntime kNN kernel against a float64 full-matrix oracle and the numpy fused kernel."""

import numpy as np
import pytest

from anomedge.errors import InputError
from anomedge.runtime.knn_onnx import OnnxKnnIndex
from anomedge.runtime.scoring import KnnIndex


def oracle(q, bank, k):
    d = np.sqrt(np.maximum(((q[:, None, :].astype(np.float64) - bank[None].astype(np.float64)) ** 2).sum(-1), 0))
    return np.sort(d, axis=1)[:, :k]


@pytest.mark.parametrize("p, m, d, k, chunk", [(1, 1, 3, 1, 4096), (50, 1000, 152, 1, 300), (784, 2500, 152, 3, 1024),
                                               (33, 7, 17, 5, 3)])
def test_matches_oracle_and_numpy_kernel(p, m, d, k, chunk):
    rng = np.random.default_rng(p + m)
    bank = (rng.normal(size=(m, d)) * 3).astype(np.float32)
    q = (rng.normal(size=(p, d)) * 3).astype(np.float32)
    ours = OnnxKnnIndex(bank, k, chunk_rows=chunk).search(q, k)
    ref = oracle(q, bank, k)
    # cancellation in ‖q‖²+‖m‖²−2q·m: absolute error ~ eps·‖q‖², stated relative to the distance scale
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * ref.max())
    np.testing.assert_allclose(ours, KnnIndex(bank).search(q, k), rtol=1e-4, atol=1e-4 * ref.max())


def test_exact_duplicates_give_exactly_zero():
    bank = (np.random.default_rng(0).normal(size=(100, 64)) * 10 + 50).astype(np.float32)  # large norms: worst case
    d = OnnxKnnIndex(bank, 1, chunk_rows=30).search(bank[:10].copy(), 1)
    np.testing.assert_array_equal(d, 0.0)


def test_bad_shapes():
    index = OnnxKnnIndex(np.zeros((4, 8), np.float32), 1)
    with pytest.raises(InputError, match=r"expected \(P,8\)"):
        index.search(np.zeros((2, 7), np.float32), 1)
    with pytest.raises(InputError, match="k=1"):
        index.search(np.zeros((2, 8), np.float32), 2)
    with pytest.raises(InputError, match="M ≥ k=5"):
        OnnxKnnIndex(np.zeros((4, 8), np.float32), 5)
