"""anomedge.calibrate.thresholds and anomedge.calibrate.normalize."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from sklearn.metrics import f1_score

from anomedge.calibrate.normalize import Normalizer, fit_normalizer
from anomedge.calibrate.thresholds import (
    METHODS,
    ThresholdResult,
    compute_threshold,
    f1_threshold,
    frr_threshold,
    quantile_threshold,
)
from anomedge.errors import InputError


def _goods(seed: int, n: int = 200, decimals: int | None = None) -> np.ndarray:
    s = np.random.default_rng(seed).gamma(2.0, 1.0, size=n)
    return np.round(s, decimals) if decimals is not None else s


@pytest.mark.parametrize("q", [0.5, 0.9, 0.99, 1.0])
def test_quantile_matches_numpy(q):
    g = _goods(0)
    res = quantile_threshold(g, q)
    np.testing.assert_allclose(res.value, np.quantile(g, q), rtol=0, atol=0)
    assert (res.method, res.params["q"], res.n_good, res.n_defect, res.note) == ("quantile", q, 200, 0, None)
    assert res.params["false_reject"]["k"] == int(np.count_nonzero(g > res.value))


@pytest.mark.parametrize("seed,decimals", [(0, None), (1, 1), (2, 0)])
@pytest.mark.parametrize("target", [0.0, 0.01, 0.05, 0.29, 0.5])
def test_frr_rejects_at_most_target_and_is_tightest(seed, decimals, target):
    g = _goods(seed, n=100, decimals=decimals)
    res = frr_threshold(g, target)
    rejected = np.mean(g > res.value)
    assert rejected <= target + 1e-12
    assert res.params["achieved"] == rejected
    # tightest: any lower good score as threshold rejects more than target
    lower = g[g < res.value]
    if lower.size:
        assert np.mean(g > lower.max()) > target
    assert res.value in g


def test_frr_zero_target_is_max_good():
    g = _goods(3)
    assert frr_threshold(g, 0.0).value == g.max()


@pytest.mark.parametrize("seed", range(5))
def test_f1_threshold_is_brute_force_best(seed):
    rng = np.random.default_rng(seed)
    y = rng.random(120) < 0.3
    s = np.round(rng.normal(size=120) + 1.5 * y, 1)
    res = f1_threshold(y, s)
    candidates = np.r_[np.unique(s), s.min() - 1]
    best = max(f1_score(y, s > t) for t in candidates)
    np.testing.assert_allclose(res.params["f1"], best, rtol=0, atol=1e-12)
    np.testing.assert_allclose(f1_score(y, s > res.value), best, rtol=0, atol=1e-12)
    assert (res.n_good, res.n_defect, res.note) == (int((~y).sum()), int(y.sum()), None)


def test_f1_without_defects_falls_back_to_max_good_with_note():
    g = _goods(4, n=30)
    res = f1_threshold(np.zeros(30, bool), g)
    assert res.value == g.max()
    assert res.n_defect == 0 and "no defective samples" in res.note
    # through the table, training goods widen the fallback
    train = np.r_[_goods(5, n=30), 100.0]
    res2 = METHODS["f1"](train, (np.zeros(30), g))
    assert res2.value == 100.0 and res2.n_good == 61 and "max of 61 good scores" in res2.note


def test_f1_method_needs_validation_set():
    with pytest.raises(InputError, match="validation set"):
        METHODS["f1"](_goods(0), None)
    with pytest.raises(InputError, match="no good samples"):
        f1_threshold(np.ones(30), _goods(0, n=30))


def test_methods_table_uniform_signature_and_to_dict():
    g = _goods(6)
    rng = np.random.default_rng(6)
    y = rng.random(100) < 0.4
    val = (y, rng.normal(size=100) + y)
    for name, fn in METHODS.items():
        res = fn(g, val)
        assert isinstance(res, ThresholdResult) and res.method == name
        d = json.loads(json.dumps(res.to_dict()))
        assert d["value"] == res.value and d["method"] == name
    assert compute_threshold("quantile", g, q=0.9).value == np.quantile(g, 0.9)
    assert compute_threshold("frr", g, target=0.1).params["target"] == 0.1


def test_unknown_method_and_param_rejected():
    with pytest.raises(InputError, match="quantile, f1, frr"):
        compute_threshold("otsu", _goods(0))
    with pytest.raises(InputError, match="does not take parameters"):
        compute_threshold("quantile", _goods(0), target=0.1)


@pytest.mark.parametrize("call", [lambda: quantile_threshold(_goods(0), 1.5), lambda: quantile_threshold(_goods(0), 0),
                                  lambda: frr_threshold(_goods(0), 1.0), lambda: frr_threshold(_goods(0), -0.1),
                                  lambda: quantile_threshold([]), lambda: quantile_threshold([1.0, np.nan] * 20)])
def test_bad_parameters_rejected(call):
    with pytest.raises(InputError):
        call()


def test_few_good_scores_warn_with_the_number():
    with pytest.warns(UserWarning, match="only 7 good scores"):
        quantile_threshold(_goods(0, n=7))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quantile_threshold(_goods(0, n=20), q=0.9)  # 20 scores resolve a 10 % tail


def test_frr_target_below_one_over_n_warns_with_the_numbers_instead_of_silently_returning_the_max():
    g = _goods(0, n=60)
    with pytest.warns(UserWarning, match=r"60 good images cannot resolve .*0\.5 %.*1/60 = 1\.7 %.*200 good images"):
        res = frr_threshold(g, 0.005)
    assert res.value == g.max() and res.note and "cannot resolve" in res.note
    assert res.params["false_reject"]["k"] == 0 and res.params["false_reject"]["ci95"][1] == pytest.approx(0.0602, abs=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frr_threshold(g, 0.02)  # 1/60 < 2 %: resolvable
    with pytest.warns(UserWarning, match="cannot resolve the 0.99 quantile"):
        quantile_threshold(_goods(0, n=40))


def test_wilson_interval_matches_scipy():
    from scipy.stats import binomtest

    from anomedge.calibrate.metrics import Rate, wilson_interval

    for k, n in ((0, 60), (2, 60), (30, 30), (7, 123)):
        ref = binomtest(k, n).proportion_ci(0.95, method="wilson")
        np.testing.assert_allclose(wilson_interval(k, n), (ref.low, ref.high), rtol=1e-9, atol=1e-12)
    assert Rate(2, 60).text() == "2/60 = 3.3 % (95 % CI 0.9–11.4 %)"
    with pytest.raises(InputError):
        wilson_interval(3, 2)


def test_f1_reports_false_reject_and_miss_counts_at_its_threshold():
    rng = np.random.default_rng(3)
    y = np.r_[np.zeros(40, np.int8), np.ones(20, np.int8)]
    s = np.r_[rng.normal(0, 1, 40), rng.normal(2, 1, 20)]
    res = f1_threshold(y, s)
    fr, miss = res.params["false_reject"], res.params["miss"]
    assert (fr["k"], fr["n"]) == (int(np.count_nonzero(s[:40] > res.value)), 40)
    assert (miss["k"], miss["n"]) == (int(np.count_nonzero(s[40:] <= res.value)), 20)
    assert fr["ci95"][0] <= fr["rate"] <= fr["ci95"][1]


# ------------------------------------------------------------------------ normaliser


def test_normalizer_maps_threshold_to_half_exactly_and_ends():
    rng = np.random.default_rng(0)
    for _ in range(100):
        lo, t, hi = np.sort(rng.normal(size=3) * 10 ** rng.uniform(-3, 3))
        norm = Normalizer(lo, t, hi)
        assert norm.apply(t) == 0.5
        assert norm.apply(lo) == 0.0
        np.testing.assert_allclose(norm.apply(hi), 1.0, rtol=0, atol=1e-15)


def test_normalizer_monotone_clip_and_extrapolation():
    norm = Normalizer(1.0, 3.0, 11.0)
    s = np.r_[np.linspace(-5, 20, 10001), np.nextafter(3.0, 0), 3.0, np.nextafter(3.0, 10)]
    s.sort()
    out = norm.apply(s)
    assert np.all(np.diff(out) >= 0) and out.min() == 0.0 and out.max() == 1.0
    # the decision rule survives up to rounding: a score one ulp above t may normalise to 0.5
    assert np.all(out[s > 3.0] >= 0.5) and np.all(out[s < 3.0] <= 0.5) and out[s == 3.0][0] == 0.5
    assert np.array_equal(out[np.abs(s - 3.0) > 1e-9] > 0.5, s[np.abs(s - 3.0) > 1e-9] > 3.0)
    raw = norm.apply(np.array([-1.0, 2.0, 7.0, 19.0]), clip=False)
    np.testing.assert_allclose(raw, [-0.5, 0.25, 0.75, 1.5], rtol=0, atol=1e-15)
    assert isinstance(norm.apply(2.0), float) and norm(2.0) == 0.25


def test_normalizer_dict_round_trip_and_validation():
    norm = Normalizer(0.1, 0.4, 2.0)
    assert Normalizer.from_dict(json.loads(json.dumps(norm.to_dict()))) == norm
    with pytest.raises(InputError, match="missing max"):
        Normalizer.from_dict({"min": 0, "threshold": 1})
    with pytest.raises(InputError, match="min < threshold < max"):
        Normalizer(1.0, 1.0, 2.0)
    with pytest.raises(InputError, match="finite"):
        Normalizer(0.0, np.nan, 2.0)


def test_fit_normalizer():
    g = _goods(1)
    t = quantile_threshold(g, 0.9).value
    norm = fit_normalizer(g, t, all_scores=np.r_[g, 50.0])
    assert (norm.min, norm.threshold, norm.max) == (g.min(), t, 50.0)
    # threshold = max good (frr target 0): the upper side is widened symmetrically
    top = frr_threshold(g, 0.0).value
    norm = fit_normalizer(g, top)
    assert norm.max == 2 * top - g.min() and norm.apply(top) == 0.5
    # all scores equal to the threshold: a unit span
    norm = fit_normalizer([2.0] * 5, 2.0)
    assert (norm.min, norm.max) == (0.0, 4.0)


def test_pixel_threshold_good_keeps_every_good_image_below_at_q1_and_is_the_quantile_of_maxima():
    from anomedge.calibrate.thresholds import pixel_threshold_good

    rng = np.random.default_rng(0)
    maps = rng.random((50, 8, 8)).astype(np.float32)
    maps[:, 0, 0] += np.linspace(1, 2, 50)  # hot corners, as a zero-padded CNN gives
    assert pixel_threshold_good(maps, 1.0) == pytest.approx(float(maps.max()))
    t = pixel_threshold_good(maps, 0.9)
    assert t == pytest.approx(float(np.quantile(maps.reshape(50, -1).max(1), 0.9)))
    assert np.mean((maps > t).any(axis=(1, 2))) <= 0.1 + 1e-9
    assert np.quantile(maps, 0.99) < t  # the old all-pixel quantile lets the hot corners through
    with pytest.raises(InputError):
        pixel_threshold_good(np.zeros((0, 4, 4)))
