"""Fast greedy k-center coreset: identical picks to a naive float64 loop, determinism, validation."""

import numpy as np
import pytest
import torch

from anomedge.errors import InputError
from anomedge.models.coreset import greedy_coreset, greedy_coreset_naive, prepare


def reference_greedy(features, n: int, projection_dim, seed: int) -> np.ndarray:
    """Textbook loop in float64 with exact differences: pick argmax of the min-distance, update, repeat."""
    x, start = prepare(features, projection_dim, seed)
    x = x.double().numpy()
    mind = np.full(len(x), np.inf)
    picks, pick = [], start
    for _ in range(n):
        picks.append(pick)
        mind = np.minimum(mind, ((x - x[pick]) ** 2).sum(1))
        mind[pick] = -np.inf
        pick = int(np.argmax(mind))
    return np.array(picks)


# (N, D, n, projection_dim, data seed): sizes chosen so that rounds accept many candidates (large
# n/N) as well as few (clustered data); random data without float32 near-ties at these seeds.
CASES = [
    (1, 5, 1, 128, 0),
    (50, 3, 50, None, 1),  # every point, down to the last one
    (2000, 30, 300, None, 2),
    (5000, 152, 500, 128, 3),  # projected 152 → 128
    (3000, 8, 2999, None, 4),
    (4000, 64, 400, 16, 5),  # projected 64 → 16
]


@pytest.mark.parametrize("n_points,dim,n,proj,data_seed", CASES)
def test_fast_greedy_equals_reference(n_points, dim, n, proj, data_seed):
    rng = np.random.default_rng(data_seed)
    features = rng.standard_normal((n_points, dim)).astype(np.float32)
    fast = greedy_coreset(features, n=n, projection_dim=proj, seed=data_seed)
    assert fast.dtype == np.int64 and fast.shape == (n,)
    np.testing.assert_array_equal(fast, reference_greedy(features, n, proj, data_seed))
    np.testing.assert_array_equal(fast, greedy_coreset_naive(features, n=n, projection_dim=proj, seed=data_seed))
    assert len(np.unique(fast)) == n


def test_clustered_data_few_acceptances_per_round():
    rng = np.random.default_rng(11)
    centers = rng.standard_normal((40, 24)) * 10
    features = (centers[rng.integers(0, 40, 6000)] + rng.standard_normal((6000, 24)) * 0.3).astype(np.float32)
    fast = greedy_coreset(torch.from_numpy(features), n=600, projection_dim=None, seed=3)
    np.testing.assert_array_equal(fast, reference_greedy(features, 600, None, 3))
    assert set(fast[:40].tolist()) and len(np.unique(fast)) == 600


def test_duplicates_never_repeat_an_index():
    rng = np.random.default_rng(2)
    base = rng.standard_normal((30, 6)).astype(np.float32)
    features = np.concatenate([base, base, base])  # 90 points, 30 distinct
    picks = greedy_coreset(features, n=90, projection_dim=None)
    assert sorted(picks.tolist()) == list(range(90))
    first = picks[:30]
    assert len({tuple(features[i]) for i in first}) == 30  # the 30 distinct points come first


def test_seed_determinism_and_projection():
    rng = np.random.default_rng(0)
    features = rng.standard_normal((3000, 200)).astype(np.float32)
    a = greedy_coreset(features, fraction=0.05, seed=7)
    b = greedy_coreset(features, fraction=0.05, seed=7)
    c = greedy_coreset(features, fraction=0.05, seed=8)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (150,) and not np.array_equal(a, c)
    x, _ = prepare(features, 128, 7)
    assert tuple(x.shape) == (3000, 128)
    x, _ = prepare(features, 256, 7)  # D <= projection_dim: no projection
    assert tuple(x.shape) == (3000, 200)


def test_torch_float16_and_float64_inputs():
    rng = np.random.default_rng(1)
    f32 = rng.standard_normal((500, 12)).astype(np.float32)
    ref = greedy_coreset(f32, n=50, projection_dim=None)
    np.testing.assert_array_equal(greedy_coreset(torch.from_numpy(f32.astype(np.float64)), n=50, projection_dim=None), ref)
    assert greedy_coreset(f32.astype(np.float16), n=50, projection_dim=None).shape == (50,)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(n=101), r"n: got 101, expected an integer in \[1, 100\]"),
        (dict(n=0), "n: got 0"),
        (dict(n=2.5), "n: got 2.5"),
        (dict(), "expected exactly one of them"),
        (dict(n=5, fraction=0.1), "expected exactly one of them"),
        (dict(fraction=0.0), r"fraction: got 0.0, expected a number in \(0, 1\]"),
        (dict(fraction=1.5), "fraction: got 1.5"),
        (dict(fraction="0.1"), "fraction: got '0.1'"),
        (dict(n=5, projection_dim=0), "projection_dim: got 0"),
    ],
)
def test_bad_arguments(kwargs, match):
    features = np.zeros((100, 4), np.float32)
    with pytest.raises(InputError, match=match):
        greedy_coreset(features, **kwargs)


def test_fraction_rounds_and_keeps_at_least_one():
    features = np.random.default_rng(0).standard_normal((100, 4)).astype(np.float32)
    assert greedy_coreset(features, fraction=0.001).shape == (1,)
    assert greedy_coreset(features, fraction=0.126).shape == (13,)
    assert sorted(greedy_coreset(features, fraction=1.0).tolist()) == list(range(100))


@pytest.mark.parametrize(
    "features,match",
    [
        (np.zeros((5,), np.float32), r"got shape \(5,\)"),
        (np.zeros((0, 3), np.float32), r"got shape \(0, 3\)"),
        (np.zeros((5, 3), np.int32), "got dtype int32"),
        (np.array([[1.0, np.nan]], np.float32), "NaN or Inf"),
        ([[1.0, 2.0]], "got list"),
    ],
)
def test_bad_features(features, match):
    with pytest.raises(InputError, match=match):
        greedy_coreset(features, n=1)
