"""The shipped kNN search graph (``knn.onnx``, built by scoring.graph at export) run by onnxruntime
(``OnnxKnnIndex``) against a float64 full-matrix oracle and the numpy fused kernel.

Tolerance: 1e-4 relative + 1e-4 of the distance scale (candidate selection by the expanded formula
can swap near-ties; the winners' distances are then exact)."""

import numpy as np
import pytest

from anomedge.errors import InputError
from anomedge.scoring.graph import build_knn_search
from anomedge.scoring.kernels import KnnIndex, OnnxKnnIndex


def oracle(q, bank, k):
    d = np.sqrt(np.maximum(((q[:, None, :].astype(np.float64) - bank[None].astype(np.float64)) ** 2).sum(-1), 0))
    return np.sort(d, axis=1)[:, :k]


def index(bank, k, chunk=4096):
    return OnnxKnnIndex(bank, k, build_knn_search(bank, k, chunk).SerializeToString())


@pytest.mark.parametrize("p, m, d, k, chunk", [(1, 1, 3, 1, 4096), (50, 1000, 152, 1, 300), (784, 2500, 152, 3, 1024),
                                               (33, 7, 17, 5, 3)])
def test_matches_oracle_and_numpy_kernel(p, m, d, k, chunk):
    rng = np.random.default_rng(p + m)
    bank = (rng.normal(size=(m, d)) * 3).astype(np.float32)
    q = (rng.normal(size=(p, d)) * 3).astype(np.float32)
    ours = index(bank, k, chunk).search(q, k)
    ref = oracle(q, bank, k)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * ref.max())
    np.testing.assert_allclose(ours, KnnIndex(bank).search(q, k), rtol=1e-4, atol=1e-4 * ref.max())


def test_float16_bank_matches_oracle_of_its_float32_values():
    rng = np.random.default_rng(3)
    bank = rng.normal(size=(300, 40)).astype(np.float16)
    q = rng.normal(size=(20, 40)).astype(np.float32)
    ref = oracle(q, bank.astype(np.float32), 2)
    np.testing.assert_allclose(index(bank, 2, 64).search(q, 2), ref, rtol=1e-4, atol=1e-4 * ref.max())


def test_exact_duplicates_give_exactly_zero():
    bank = (np.random.default_rng(0).normal(size=(100, 64)) * 10 + 50).astype(np.float32)  # large norms: worst case
    d = index(bank, 1, 30).search(bank[:10].copy(), 1)
    np.testing.assert_array_equal(d, 0.0)


def test_bad_shapes():
    idx = index(np.zeros((4, 8), np.float32), 1)
    with pytest.raises(InputError, match=r"expected \(P,8\)"):
        idx.search(np.zeros((2, 7), np.float32), 1)
    with pytest.raises(InputError, match="k=1"):
        idx.search(np.zeros((2, 8), np.float32), 2)
    with pytest.raises(InputError, match="at least k=5"):
        OnnxKnnIndex(np.zeros((4, 8), np.float32), 5, b"")
    with pytest.raises(InputError, match=r"expected \(P,3\)"):  # a graph built for another k
        OnnxKnnIndex(np.zeros((4, 8), np.float32), 3, build_knn_search(np.zeros((4, 8), np.float32), 1).SerializeToString())


def test_exported_knn_graph_matches_the_oracle(tiny_artifact):
    """The knn.onnx the exporter shipped in the artifact, on queries near its bank rows."""
    bank = tiny_artifact.array("bank.npy")
    k = int(tiny_artifact.metadata.scoring.get("k", 1))
    rng = np.random.default_rng(5)
    q = (bank[rng.integers(0, len(bank), 64)] + rng.normal(scale=0.1, size=(64, bank.shape[1]))).astype(np.float32)
    ours = OnnxKnnIndex(bank, k, tiny_artifact.path("knn.onnx")).search(q, k)
    ref = oracle(q, bank.astype(np.float32), k)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * ref.max())
