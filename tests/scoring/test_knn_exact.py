"""The tie-exact kNN kernels (``knn_exact.BlockedKnnIndex``, ``knn_pruned.PrunedKnnIndex``) against a naive oracle.

Oracle: the full P×M matrix of float64 Σ(q − b)² (the contract's own definition), winners by
(distance, row index). Stated tolerance: none on the winners — indices and distances must be
bit-identical to the oracle's and between the kernels; vs the float64 exact distance the float32
result is within one float32 rounding (rtol 2⁻²³ below).
"""

import numpy as np
import pytest

from anomedge.errors import InputError
from anomedge.scoring import knn_exact
from anomedge.scoring.knn_exact import BlockedKnnIndex, exact_d2
from anomedge.scoring.knn_pruned import PrunedKnnIndex

KERNELS = {
    "blocked": lambda bank: BlockedKnnIndex(bank, block_rows=256),
    "pruned": lambda bank: PrunedKnnIndex(bank, dims=8, cluster_rows=64),
}


def oracle(queries: np.ndarray, bank: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    p, m = len(queries), len(bank)
    d2 = exact_d2(queries, bank.astype(np.float32), np.repeat(np.arange(p), m), np.tile(np.arange(m), p)).reshape(p, m)
    idx = np.stack([np.lexsort((np.arange(m), row))[:k] for row in d2])
    return np.sqrt(np.take_along_axis(d2, idx, axis=1)).astype(np.float32), idx


def feature_like(rng, m: int, d: int = 48) -> np.ndarray:
    """Non-negative, low-rank-plus-noise rows with decaying variance: the shape of CNN patch features."""
    basis = rng.standard_normal((12, d)) * np.linspace(3, 0.3, 12)[:, None]
    return np.maximum(rng.standard_normal((m, 12)) @ basis + 0.3 * rng.standard_normal((m, d)) + 2, 0).astype(np.float32)


@pytest.mark.parametrize("name", KERNELS)
@pytest.mark.parametrize("k", [1, 3])
def test_matches_oracle_bit_for_bit(name, k):
    rng = np.random.default_rng(k)
    bank = feature_like(rng, 1500)
    queries = np.r_[bank[rng.integers(0, 1500, 40)] + 0.2 * rng.standard_normal((40, 48)).astype(np.float32),
                    feature_like(rng, 40)]
    dist, idx = KERNELS[name](bank).search_with_index(queries, k)
    ref_dist, ref_idx = oracle(queries, bank, k)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_array_equal(dist, ref_dist)
    exact = np.linalg.norm(queries[:, None].astype(np.float64) - bank[idx].astype(np.float64), axis=2)
    np.testing.assert_allclose(dist, exact, rtol=2.0**-23, atol=0)


def test_pruned_equals_blocked_and_touches_a_fraction():
    rng = np.random.default_rng(5)
    bank = feature_like(rng, 6000)
    queries = bank[rng.integers(0, 6000, 300)] + 0.1 * rng.standard_normal((300, 48)).astype(np.float32)
    pruned = PrunedKnnIndex(bank, dims=16, cluster_rows=128)
    for k in (1, 2):
        a, ia = BlockedKnnIndex(bank).search_with_index(queries, k)
        b, ib = pruned.search_with_index(queries, k)
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(a, b)
    assert pruned.touched < 0.5 * 300 * 6000  # full distances for under half the (query, row) pairs


@pytest.mark.parametrize("name", KERNELS)
def test_adversarial_ties_go_to_the_lowest_row(name, monkeypatch):
    d = 6
    # ±unit vectors at distance exactly 1 from the origin, a duplicate block, and a block 1 + 2⁻²⁰ away (near-ties)
    units = np.concatenate([np.eye(d), -np.eye(d)]).astype(np.float32)
    bank = np.concatenate([units, units, units * np.float32(1 + 2.0**-20)])
    monkeypatch.setattr(knn_exact, "CANDIDATE_CAP", 16)  # force compactions of the tie lists
    queries = np.zeros((5, d), np.float32)
    queries[1, 0] = 1.0  # equals rows 0 and 12 exactly
    queries[2] = bank[30]  # equals row 30 only (rows 6 and 18 are 2⁻²⁰ away)
    dist, idx = KERNELS[name](bank).search_with_index(queries, 3)
    ref_dist, ref_idx = oracle(queries, bank, 3)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_array_equal(dist, ref_dist)
    assert idx[0].tolist() == [0, 1, 2] and idx[1, :2].tolist() == [0, 12] and dist[1, 0] == 0 and idx[2, 0] == 30


@pytest.mark.parametrize("name", KERNELS)
def test_bank_smaller_than_a_block_and_one_row(name):
    rng = np.random.default_rng(2)
    for m in (1, 5, 63):
        bank = rng.standard_normal((m, 10)).astype(np.float32)
        queries = rng.standard_normal((7, 10)).astype(np.float32)
        k = min(m, 2)
        dist, idx = KERNELS[name](bank).search_with_index(queries, k)
        ref = oracle(queries, bank, k)
        np.testing.assert_array_equal(idx, ref[1])
        np.testing.assert_array_equal(dist, ref[0])


@pytest.mark.parametrize("name", KERNELS)
def test_bad_queries_fail_closed_and_leave_the_others_alone(name):
    rng = np.random.default_rng(3)
    bank = rng.standard_normal((300, 12)).astype(np.float32)
    queries = rng.standard_normal((6, 12)).astype(np.float32)
    queries[1, 3], queries[2, 0], queries[3] = np.nan, np.inf, 1e30
    dist, idx = KERNELS[name](bank).search_with_index(queries, 2)
    assert np.isnan(dist[1:4]).all() and (idx[1:4] == -1).all()  # no finite (small) score for a bad patch
    good = [0, 4, 5]
    ref = oracle(queries[good], bank, 2)
    np.testing.assert_array_equal(idx[good], ref[1])
    np.testing.assert_array_equal(dist[good], ref[0])


def test_float16_bank_is_searched_as_its_widened_values():
    rng = np.random.default_rng(4)
    bank16 = rng.standard_normal((500, 16)).astype(np.float16)
    queries = rng.standard_normal((20, 16)).astype(np.float32)
    for name in KERNELS:
        dist, idx = KERNELS[name](bank16).search_with_index(queries, 1)
        ref = oracle(queries, bank16.astype(np.float32), 1)
        np.testing.assert_array_equal(idx, ref[1])
        np.testing.assert_array_equal(dist, ref[0])


def test_user_errors_are_one_line_input_errors():
    bank = np.ones((10, 4), np.float32)
    with pytest.raises(InputError, match="bank: contains NaN"):
        BlockedKnnIndex(np.full((3, 4), np.nan, np.float32))
    with pytest.raises(InputError, match="queries: got shape"):
        PrunedKnnIndex(bank).search(np.ones((2, 5), np.float32))
    with pytest.raises(InputError, match="k: got 11"):
        BlockedKnnIndex(bank).search(np.ones((2, 4), np.float32), 11)
    with pytest.raises(InputError, match="bank: row norms"):
        BlockedKnnIndex(np.r_[np.zeros((1, 4)), np.full((1, 4), 1e19)].astype(np.float32))


def test_equal_blocks_cover_the_bank_without_a_ragged_tail():
    assert knn_exact.equal_blocks(2493, 2048) == 1248 and knn_exact.equal_blocks(100, 2048) == 100
    assert knn_exact.equal_blocks(27_675, 2048) * 14 >= 27_675
