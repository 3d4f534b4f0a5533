"""anomedge.calibrate.metrics against scikit-learn (image level) and a slow per-region AUPRO reference."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from skimage.measure import label as sk_label
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    precision_recall_fscore_support,
    roc_auc_score,
)
from sklearn.metrics import roc_curve as sk_roc_curve

from anomedge.calibrate import metrics as M
from anomedge.errors import InputError

ATOL = 1e-12  # exact metrics: only float rounding separates them from scikit-learn


def _data(seed: int, n: int = 300, decimals: int | None = 1):
    """Random labels (both classes) and scores; rounding to ``decimals`` creates many ties."""
    rng = np.random.default_rng(seed)
    y = rng.random(n) < rng.uniform(0.1, 0.6)
    y[:2] = [True, False]
    s = rng.normal(size=n) + 1.2 * y
    if decimals is not None:
        s = np.round(s, decimals)
    return y, s


CASES = [(seed, dec) for seed in range(6) for dec in (None, 1, 0)]


@pytest.mark.parametrize("seed,decimals", CASES)
def test_image_metrics_match_sklearn(seed, decimals):
    y, s = _data(seed, decimals=decimals)
    np.testing.assert_allclose(M.auroc(y, s), roc_auc_score(y, s), rtol=0, atol=ATOL)
    np.testing.assert_allclose(M.pr_auc(y, s), average_precision_score(y, s), rtol=0, atol=ATOL)

    fpr, tpr, thr = M.roc_curve(y, s)
    fpr_ref, tpr_ref, thr_ref = sk_roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_array_equal(thr, thr_ref)
    np.testing.assert_allclose(fpr, fpr_ref, rtol=0, atol=ATOL)
    np.testing.assert_allclose(tpr, tpr_ref, rtol=0, atol=ATOL)

    p, r, t = M.pr_curve(y, s)
    p_ref, r_ref, t_ref = precision_recall_curve(y, s)
    np.testing.assert_array_equal(t, t_ref)
    np.testing.assert_allclose(p, p_ref, rtol=0, atol=ATOL)
    np.testing.assert_allclose(r, r_ref, rtol=0, atol=ATOL)


@pytest.mark.parametrize("seed,decimals", CASES)
def test_f1_max_is_brute_force_best_and_reproducible(seed, decimals):
    y, s = _data(seed, decimals=decimals)
    candidates = np.r_[np.unique(s), s.min() - 1.0]  # flag score > t for every distinct cut
    brute = max(precision_recall_fscore_support(y, s > t, average="binary", zero_division=0)[2] for t in candidates)
    f1, t = M.f1_max(y, s)
    np.testing.assert_allclose(f1, brute, rtol=0, atol=ATOL)
    p_ref, r_ref, f_ref, _ = precision_recall_fscore_support(y, s > t, average="binary", zero_division=0)
    np.testing.assert_allclose(M.f1_at(y, s, t), f_ref, rtol=0, atol=ATOL)
    np.testing.assert_allclose(f1, f_ref, rtol=0, atol=ATOL)
    # the threshold lies strictly inside a gap: no score equals it unless it is below every score
    assert not np.any(s == t) or t < s.min()


@pytest.mark.parametrize("seed", range(4))
def test_image_metrics_dict_at_threshold(seed):
    y, s = _data(seed)
    t = float(np.median(s))
    out = M.image_metrics(y, s, threshold=t)
    p_ref, r_ref, f_ref, _ = precision_recall_fscore_support(y, s > t, average="binary", zero_division=0)
    np.testing.assert_allclose([out["precision"], out["recall"], out["f1"]], [p_ref, r_ref, f_ref], atol=ATOL)
    np.testing.assert_allclose(out["fpr"], np.mean(s[~y] > t), atol=ATOL)
    np.testing.assert_allclose(out["auroc"], roc_auc_score(y, s), atol=ATOL)
    np.testing.assert_allclose(out["pr_auc"], average_precision_score(y, s), atol=ATOL)
    assert (out["n_good"], out["n_defect"]) == (int((~y).sum()), int(y.sum()))
    np.testing.assert_allclose(M.f1_at(y, s, out["f1_max_threshold"]), out["f1_max"], atol=ATOL)
    assert "precision" not in M.image_metrics(y, s)


def test_auroc_hand_cases():
    assert M.auroc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert M.auroc([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1]) == 0.0
    assert M.auroc([0, 1], [0.5, 0.5]) == 0.5  # a tie counts one half
    assert M.auroc([0, 0, 1], [0.1, 0.5, 0.5]) == 0.75
    assert M.pr_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0


def test_float32_scores_and_bool_or_int_labels_agree():
    y, s = _data(7, decimals=None)
    a = M.auroc(y, s.astype(np.float32))
    b = M.auroc(y.astype(np.int64), s.astype(np.float32))
    assert a == b
    np.testing.assert_allclose(a, roc_auc_score(y, s.astype(np.float32)), atol=ATOL)


# ------------------------------------------------------------------------ errors


def test_one_class_labels_rejected():
    with pytest.raises(InputError, match="AUROC needs both good and defective samples: got only good"):
        M.auroc([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(InputError, match="got only defective"):
        M.image_metrics([1, 1], [0.1, 0.2])
    with pytest.raises(InputError, match="both good and defective"):
        M.pixel_auroc(np.zeros((1, 4, 4), bool), np.zeros((1, 4, 4)))


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(InputError, match=r"\(3,\) and \(4,\)"):
        M.auroc([0, 1, 1], [0.1, 0.2, 0.3, 0.4])
    with pytest.raises(InputError, match=r"\(2, 4, 4\) and \(2, 4, 5\)"):
        M.aupro(np.ones((2, 4, 4), bool), np.zeros((2, 4, 5)))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_scores_rejected(bad):
    with pytest.raises(InputError, match="NaN/inf"):
        M.auroc([0, 1, 1], [0.1, bad, 0.3])
    maps = np.zeros((1, 4, 4))
    maps[0, 1, 1] = bad
    masks = np.zeros((1, 4, 4), bool)
    masks[0, 0, 0] = True
    with pytest.raises(InputError, match="NaN/inf"):
        M.pixel_metrics(masks, maps)


def test_non_binary_labels_rejected():
    with pytest.raises(InputError, match="only 0 and 1"):
        M.auroc([0, 2, 1], [0.1, 0.2, 0.3])


def test_module_imports_numpy_only():
    code = (
        "import sys, anomedge.calibrate.metrics, anomedge.calibrate.thresholds, anomedge.calibrate.normalize\n"
        "print(sorted(m for m in ('torch', 'sklearn', 'cv2', 'scipy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------------ pixel level


def _slow_aupro(masks, maps, thresholds, fpr_limit=0.3):
    """Reference: loop over thresholds, loop over 8-connected regions (scikit-image labels)."""
    good = ~masks
    points = []
    for t in thresholds:
        flagged = maps >= t
        fpr = flagged[good].mean()
        overlaps = []
        for k in range(masks.shape[0]):
            lab = sk_label(masks[k], connectivity=2)
            for r in range(1, lab.max() + 1):
                region = lab == r
                overlaps.append(flagged[k][region].mean())
        points.append((fpr, np.mean(overlaps)))
    points.sort()
    x = np.array([0.0] + [p[0] for p in points] + [1.0])
    y = np.array([0.0] + [p[1] for p in points] + [1.0])
    area = 0.0
    for i in range(1, len(x)):
        if x[i] <= fpr_limit:
            area += 0.5 * (y[i] + y[i - 1]) * (x[i] - x[i - 1])
        else:
            if x[i - 1] < fpr_limit:
                y_at = y[i - 1] + (y[i] - y[i - 1]) * (fpr_limit - x[i - 1]) / (x[i] - x[i - 1])
                area += 0.5 * (y[i - 1] + y_at) * (fpr_limit - x[i - 1])
            break
    return area / fpr_limit


def _pixel_data(seed, n=3, h=24, w=24, levels=None):
    """Random blobs (some images defect-free) and maps correlated with them."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, h, w), bool)
    for k in range(n - 1):  # the last image stays good
        for _ in range(rng.integers(1, 4)):
            r, c = rng.integers(0, h - 6), rng.integers(0, w - 6)
            masks[k, r : r + rng.integers(1, 7), c : c + rng.integers(1, 7)] = True
    maps = rng.random(masks.shape) + 0.6 * masks
    if levels is not None:
        maps = np.floor(maps * levels) / levels
    return masks, maps


@pytest.mark.parametrize("seed", range(3))
def test_aupro_exact_sweep_matches_reference_on_all_distinct_values(seed):
    # Quantised maps: the reference evaluated at every distinct value IS the exact curve.
    masks, maps = _pixel_data(seed, levels=12)
    ref = _slow_aupro(masks, maps, np.unique(maps))
    np.testing.assert_allclose(M.aupro(masks, maps), ref, rtol=0, atol=ATOL)
    np.testing.assert_allclose(M.aupro(masks, maps, fpr_limit=1.0), _slow_aupro(masks, maps, np.unique(maps), 1.0),
                               rtol=0, atol=ATOL)


@pytest.mark.parametrize("seed", range(2))
def test_aupro_grid_mode_matches_reference_grid(seed):
    masks, maps = _pixel_data(seed + 10)
    grid = np.linspace(maps.max(), maps.min(), 50)
    np.testing.assert_allclose(M.aupro(masks, maps, num_thresholds=50), _slow_aupro(masks, maps, grid),
                               rtol=0, atol=ATOL)


def test_aupro_exact_close_to_fine_grid_reference():
    # Continuous maps: a 400-threshold grid replaces the curve by chords; 2e-3 covers that.
    masks, maps = _pixel_data(20)
    grid = np.linspace(maps.max(), maps.min(), 400)
    np.testing.assert_allclose(M.aupro(masks, maps), _slow_aupro(masks, maps, grid), rtol=0, atol=2e-3)


def test_aupro_hand_cases():
    masks = np.zeros((2, 10, 10), bool)
    masks[0, 2:4, 2:4] = True  # region A: 4 pixels
    masks[1, 5:8, 5:9] = True  # region B: 12 pixels
    np.testing.assert_allclose(M.aupro(masks, masks.astype(float)), 1.0, atol=ATOL)  # perfect map
    # constant map: one point (fpr, pro) = (1, 1); the curve is y = x, area 0.045 / 0.3
    np.testing.assert_allclose(M.aupro(masks, np.full(masks.shape, 0.7)), 0.15, atol=ATOL)
    np.testing.assert_allclose(M.aupro(masks, 1.0 - masks), 0.0, atol=ATOL)  # inverted map
    # A fully found, B missed, goods at 0.5: PRO is the mean over regions (0.5), not over pixels (0.25)
    maps = np.full(masks.shape, 0.5)
    maps[0][masks[0]] = 1.0
    maps[1][masks[1]] = 0.0
    np.testing.assert_allclose(M.aupro(masks, maps), 0.5, atol=ATOL)


def test_aupro_uses_8_connectivity():
    masks = np.zeros((1, 8, 8), bool)
    masks[0, 1, 1] = masks[0, 2, 2] = True  # diagonal neighbours: one region under 8-connectivity
    masks[0, 6, 6] = True  # a second region
    maps = np.zeros(masks.shape)
    maps[0, 1, 1] = maps[0, 6, 6] = 1.0
    # at t=1: fpr 0, PRO (1/2 + 1)/2 = 0.75; at t=0: (1, 1). Area to 0.3 / 0.3 = (0.75 + 0.825)/2
    np.testing.assert_allclose(M.aupro(masks, maps), 0.7875, atol=ATOL)


def test_pixel_auroc_and_pixel_metrics_match_sklearn():
    masks, maps = _pixel_data(3, levels=20)
    ref = roc_auc_score(masks.ravel(), maps.ravel())
    np.testing.assert_allclose(M.pixel_auroc(masks, maps), ref, rtol=0, atol=ATOL)
    out = M.pixel_metrics(masks, maps, threshold=0.5)
    np.testing.assert_allclose(out["pixel_auroc"], ref, rtol=0, atol=ATOL)
    np.testing.assert_allclose(out["aupro"], M.aupro(masks, maps), rtol=0, atol=ATOL)
    p, r, f, _ = precision_recall_fscore_support(masks.ravel(), maps.ravel() > 0.5, average="binary")
    np.testing.assert_allclose([out["pixel_precision"], out["pixel_recall"], out["pixel_f1"]], [p, r, f], atol=ATOL)
    # a single (H, W) pair is accepted as N = 1
    np.testing.assert_allclose(M.pixel_auroc(masks[0], maps[0]), roc_auc_score(masks[0].ravel(), maps[0].ravel()),
                               atol=ATOL)


def test_aupro_input_errors():
    with pytest.raises(InputError, match="at least one defective region"):
        M.aupro(np.zeros((1, 4, 4), bool), np.zeros((1, 4, 4)))
    with pytest.raises(InputError, match="good pixels"):
        M.aupro(np.ones((1, 4, 4), bool), np.zeros((1, 4, 4)))
    m = np.zeros((1, 4, 4), bool)
    m[0, 0, 0] = True
    with pytest.raises(InputError, match="fpr_limit"):
        M.aupro(m, np.zeros((1, 4, 4)), fpr_limit=0.0)
    with pytest.raises(InputError, match="num_thresholds"):
        M.aupro(m, np.zeros((1, 4, 4)), num_thresholds=1)
    with pytest.raises(InputError, match=r"\(N, H, W\)"):
        M.aupro(np.zeros((4,), bool), np.zeros((4,)))
