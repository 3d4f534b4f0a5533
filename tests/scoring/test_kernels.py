"""Fused kNN / Mahalanobis kernels against naive float64 oracles on random inputs."""

import numpy as np
import pytest

from anomedge.errors import InputError
from anomedge.scoring.kernels import KnnIndex, MahalanobisIndex, inverse_cov_factor, knn_distances

RTOL = 1e-4  # relative; the absolute tolerance is 1e-4 × the median oracle distance (the distance scale)


def knn_oracle(queries: np.ndarray, bank: np.ndarray, k: int) -> np.ndarray:
    """Full P×M float64 matrix of exact ‖q − m‖², sorted: the k smallest distances."""
    q, b = queries.astype(np.float64), bank.astype(np.float64)
    d2 = ((q[:, None, :] - b[None, :, :]) ** 2).sum(-1) if q.shape[0] * b.shape[0] <= 2e6 else (
        (q * q).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * q @ b.T)
    return np.sqrt(np.maximum(np.sort(d2, axis=1)[:, :k], 0.0))


def assert_close_to_oracle(got: np.ndarray, ref: np.ndarray) -> None:
    scale = float(np.median(ref)) if ref.size else 1.0
    np.testing.assert_allclose(got, ref, rtol=RTOL, atol=1e-4 * max(scale, 1e-6))


SHAPES = [(1, 1, 3), (7, 1000, 152), (100, 333, 17), (784, 5000, 152)]


@pytest.mark.parametrize("p,m,d", SHAPES)
@pytest.mark.parametrize("k", [1, 3])
def test_knn_float32_matches_oracle(p, m, d, k):
    rng = np.random.default_rng(p + m + d + k)
    queries = rng.standard_normal((p, d)).astype(np.float32)
    bank = (rng.standard_normal((m, d)) * 2 + 1).astype(np.float32)
    if k > m:
        with pytest.raises(InputError, match="k: got 3"):
            KnnIndex(bank).search(queries, k)
        return
    got = KnnIndex(bank).search(queries, k)
    assert got.shape == (p, k) and got.dtype == np.float32
    assert np.all(np.diff(got, axis=1) >= 0)
    assert_close_to_oracle(got, knn_oracle(queries, bank, k))


@pytest.mark.parametrize("p,m,d", SHAPES[1:])
@pytest.mark.parametrize("k", [1, 3])
def test_knn_float16_matches_oracle_on_rounded_bank(p, m, d, k):
    rng = np.random.default_rng(7 * p + m + d + k)
    queries = rng.standard_normal((p, d)).astype(np.float32)
    bank32 = rng.standard_normal((m, d)).astype(np.float32)
    bank16 = bank32.astype(np.float16)
    index = KnnIndex(bank16)
    assert index.nbytes < bank32.nbytes  # stored as float16 (+ one float32 norm per row)
    got = index.search(queries, k)
    assert_close_to_oracle(got, knn_oracle(queries, bank16, k))
    # Stated: vs the float32 bank the float16 rounding (2^-11 relative per entry) moves
    # distances of unit-variance data by < 1e-3 relative.
    np.testing.assert_allclose(got, knn_oracle(queries, bank32, k), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("block_rows", [1, 7, 64, 333, 5000])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_knn_blocks_smaller_than_and_not_dividing_bank(block_rows, dtype):
    rng = np.random.default_rng(block_rows)
    queries = rng.standard_normal((50, 24)).astype(np.float32)
    bank = rng.standard_normal((1001, 24)).astype(dtype)
    ref = knn_oracle(queries, bank, 4)
    for k in (1, 4):
        got, idx = KnnIndex(bank, block_rows=block_rows).search_with_index(queries, k)
        assert_close_to_oracle(got, ref[:, :k])
        exact = np.linalg.norm(queries[:, None, :] - bank[idx].astype(np.float32), axis=2)
        np.testing.assert_allclose(got, exact, rtol=1e-5, atol=1e-6)


def test_knn_many_query_blocks():
    rng = np.random.default_rng(3)
    index = KnnIndex(rng.standard_normal((300, 8)).astype(np.float32), block_rows=128)
    index.query_rows = 100  # 2,345 queries → 24 query blocks, the last one partial
    queries = rng.standard_normal((2345, 8)).astype(np.float32)
    for k in (1, 3):
        assert_close_to_oracle(index.search(queries, k), knn_oracle(queries, index.rows(np.arange(300)), k))


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_knn_duplicates_are_exactly_zero(dtype):
    rng = np.random.default_rng(5)
    bank = (rng.standard_normal((500, 152)) * 30 + 100).astype(dtype)  # large norms: worst cancellation
    queries = bank[rng.integers(0, 500, 64)].astype(np.float32)
    bank = np.concatenate([bank, bank[:10]])  # duplicated rows too
    got = KnnIndex(bank, block_rows=128).search(queries, 2)
    assert not np.isnan(got).any()
    np.testing.assert_array_equal(got[:, 0], 0.0)


def test_knn_empty_queries_and_convenience():
    bank = np.eye(4, dtype=np.float32)
    assert KnnIndex(bank).search(np.zeros((0, 4), np.float32), 2).shape == (0, 2)
    got = knn_distances(np.array([[1, 0, 0, 0], [0, 0, 0, 3]], np.float32), bank, k=2)
    np.testing.assert_allclose(got, [[0.0, np.sqrt(2)], [2.0, np.sqrt(10)]], rtol=1e-6)


@pytest.mark.parametrize(
    "bank,queries,k,match",
    [
        (np.zeros((5,), np.float32), np.zeros((1, 5), np.float32), 1, r"bank: got shape \(5\), expected \(M,D\)"),
        (np.zeros((5, 3), np.float64), np.zeros((1, 3), np.float32), 1, "bank: got dtype float64"),
        (np.zeros((0, 3), np.float32), np.zeros((1, 3), np.float32), 1, "M >= 1"),
        (np.full((2, 3), np.nan, np.float32), np.zeros((1, 3), np.float32), 1, "NaN or Inf"),
        (np.zeros((5, 3), np.float32), np.zeros((1, 4), np.float32), 1, r"got shape \(1,4\), expected \(P,3\)"),
        (np.zeros((5, 3), np.float32), np.zeros((4,), np.float32), 1, r"queries: got shape \(4\)"),
        (np.zeros((5, 3), np.float32), np.zeros((1, 3), np.int64), 1, "queries: got dtype int64"),
        (np.zeros((5, 3), np.float32), [[0.0, 0.0, 0.0]], 1, "got list"),
        (np.zeros((5, 3), np.float32), np.zeros((1, 3), np.float32), 0, "k: got 0"),
        (np.zeros((5, 3), np.float32), np.zeros((1, 3), np.float32), 6, "at most the bank size M=5"),
    ],
)
def test_knn_bad_inputs(bank, queries, k, match):
    with pytest.raises(InputError, match=match):
        KnnIndex(bank).search(queries, k)


def test_knn_bad_block_rows():
    with pytest.raises(InputError, match="block_rows: got 0"):
        KnnIndex(np.zeros((2, 2), np.float32), block_rows=0)


# ---------------------------------------------------------------- Mahalanobis


def random_cov(rng: np.random.Generator, p: int, c: int) -> np.ndarray:
    a = rng.standard_normal((p, c, 2 * c))
    return a @ a.transpose(0, 2, 1) / (2 * c) + 0.01 * np.eye(c)


def mahalanobis_oracle(x: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """Per position, float64: (x − μ)ᵀ Σ⁻¹ (x − μ)."""
    out = np.empty(x.shape[:2])
    for p in range(mean.shape[0]):
        d = x[:, p].astype(np.float64) - mean[p]
        out[:, p] = np.einsum("nc,cd,nd->n", d, np.linalg.inv(cov[p]), d)
    return out


def test_inverse_cov_factor_is_a_factor_of_the_inverse():
    rng = np.random.default_rng(0)
    cov = random_cov(rng, 6, 9)
    factor = inverse_cov_factor(cov, dtype=np.float64)
    np.testing.assert_allclose(factor @ factor.transpose(0, 2, 1), np.linalg.inv(cov), rtol=1e-9, atol=1e-9)
    assert np.all(np.tril(factor, -1) == 0)  # upper triangular
    assert inverse_cov_factor(cov).dtype == np.float32


@pytest.mark.parametrize("n,p,c", [(1, 49, 10), (3, 64, 32), (1, 1, 1), (2, 5, 100)])
def test_mahalanobis_float32_matches_oracle(n, p, c):
    rng = np.random.default_rng(n * p * c)
    cov = random_cov(rng, p, c)
    mean = rng.standard_normal((p, c)).astype(np.float32)
    x = (mean + rng.standard_normal((n, p, c))).astype(np.float32)
    got = MahalanobisIndex(mean, inverse_cov_factor(cov)).score(x)
    assert got.shape == (n, p) and got.dtype == np.float32
    np.testing.assert_allclose(got, mahalanobis_oracle(x, mean, cov), rtol=1e-4)


def test_mahalanobis_float16_factor_within_stated_tolerance():
    # float16 factor: 2^-11 relative rounding per entry → the quadratic form is within 1 % here.
    rng = np.random.default_rng(1)
    p, c = 70, 20  # 70 positions: several widening chunks, the last one partial
    cov = random_cov(rng, p, c)
    mean = rng.standard_normal((p, c)).astype(np.float32)
    x = (mean + rng.standard_normal((4, p, c))).astype(np.float32)
    index = MahalanobisIndex(mean, inverse_cov_factor(cov, dtype=np.float16))
    assert index.factor.dtype == np.float16
    np.testing.assert_allclose(index.score(x), mahalanobis_oracle(x, mean, cov), rtol=1e-2)
    # and exactly what the float32 kernel gives on the widened factor
    wide = MahalanobisIndex(mean, index.factor.astype(np.float32)).score(x)
    np.testing.assert_allclose(index.score(x), wide, rtol=1e-6)


def test_mahalanobis_bad_inputs():
    mean, factor = np.zeros((4, 3), np.float32), np.zeros((4, 3, 3), np.float32)
    with pytest.raises(InputError, match=r"factor: got shape \(4,3,2\), expected \(4,3,3\)"):
        MahalanobisIndex(mean, np.zeros((4, 3, 2), np.float32))
    with pytest.raises(InputError, match="mean: got dtype float64"):
        MahalanobisIndex(mean.astype(np.float64), factor)
    index = MahalanobisIndex(mean, factor)
    with pytest.raises(InputError, match=r"x: got shape \(1,5,3\), expected \(N,4,3\)"):
        index.score(np.zeros((1, 5, 3), np.float32))
    with pytest.raises(InputError, match=r"x: got shape \(4,3\)"):
        index.score(np.zeros((4, 3), np.float32))
    with pytest.raises(InputError, match="not positive definite"):
        inverse_cov_factor(-np.eye(3)[None].repeat(2, axis=0))
    with pytest.raises(InputError, match=r"cov: got shape \(2,3,4\)"):
        inverse_cov_factor(np.zeros((2, 3, 4)))
