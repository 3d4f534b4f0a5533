"""The decision object: fail closed (OK only for a finite score under a finite threshold), thresholds
validated at load, the normaliser and heat range from the same block, live re-calibration."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from anomedge.errors import ArtifactError, InputError
from anomedge.runtime.decision import Decision, ThresholdWatch, check_threshold, heat_range

BLOCK = {"image": 20.0, "pixel": 15.0, "normalization": {"min": 10.0, "threshold": 20.0, "max": 40.0}}


def test_label_is_ok_only_for_a_finite_score_at_or_below_a_finite_threshold():
    d = Decision.from_thresholds(BLOCK)
    assert d.label(20.0) == ("OK", None) and d.label(np.nextafter(20.0, np.inf)) == ("NG", None)
    assert d.label(-1e300) == ("OK", None) and d.label(np.float32(25.0)) == ("NG", None)
    for bad in (float("nan"), float("inf"), float("-inf"), np.float32("nan")):
        label, reason = d.label(bad)
        assert label == "ERROR" and "non-finite" in reason
    assert Decision.from_thresholds(BLOCK, on_error="ng").label(float("nan"))[0] == "NG"
    empty = Decision.from_thresholds({})
    assert empty.threshold is None and empty.label(0.0) == ("ERROR", "no image threshold: run ad-calibrate or pass --threshold")


@pytest.mark.parametrize("key,value", [("image", float("nan")), ("image", float("inf")), ("image", "1.0"),
                                       ("image", True), ("pixel", float("-inf")), ("pixel", [1])])
def test_non_finite_or_non_numeric_thresholds_are_refused_at_load(key, value):
    with pytest.raises(ArtifactError, match=f"thresholds.{key}"):
        Decision.from_thresholds({**BLOCK, key: value}, where="art/metadata.json: ")


@pytest.mark.parametrize("norm", [{"min": 1.0, "threshold": float("nan"), "max": 3.0}, {"min": 5.0, "threshold": 2.0, "max": 3.0},
                                  {"min": 1.0}, "0..1"])
def test_a_broken_normalization_block_is_refused(norm):
    with pytest.raises(ArtifactError, match="thresholds.normalization"):
        Decision.from_thresholds({**BLOCK, "normalization": norm})


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", float("nan"), "abc"])
def test_non_finite_threshold_override_is_refused(value):
    with pytest.raises(InputError, match="--threshold"):
        check_threshold(value)
    with pytest.raises(InputError):
        Decision.from_thresholds(BLOCK, override=value)


def test_normaliser_maps_the_threshold_in_force_to_one_half():
    d = Decision.from_thresholds(BLOCK)
    np.testing.assert_allclose([d.normalize(s) for s in (0, 10, 15, 20, 30, 40, 99)], [0, 0, 0.25, 0.5, 0.75, 1, 1], atol=1e-12)
    moved = Decision.from_thresholds(BLOCK, override=30.0)
    assert moved.threshold == 30.0 and moved.origin == "--threshold" and moved.normalize(30.0) == 0.5
    assert moved.pixel_threshold == 15.0 and d.normalize(float("nan")) is None
    assert Decision.from_thresholds({"image": 2.0}).normalize(1.0) is None
    assert Decision.from_thresholds({"image": 2.0}).pixel_threshold == 2.0  # no pixel threshold: the image one


def test_heat_range_prefers_normalization_and_stays_calibrated_under_override():
    assert heat_range({"normalization": {"min": 1.0, "threshold": 2.0, "max": 5.0}}, 2.0) == (1.0, 5.0)
    assert heat_range({"good_scores": {"min": 30.0}}, 40.0) == (30.0, 50.0)
    assert Decision.from_thresholds({"image": 4.0}, override=100.0).heat_range == (0.0, 8.0)


def _rewrite(path, thresholds):
    meta = json.loads(path.read_text())
    meta["thresholds"] = thresholds
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, path)  # atomic, as ad-calibrate writes it


def test_threshold_watch_follows_an_atomic_rewrite_and_keeps_the_old_one_on_a_bad_rewrite(tmp_path):
    meta = tmp_path / "metadata.json"
    meta.write_text(json.dumps({"thresholds": BLOCK}))
    current = Decision.from_thresholds(BLOCK)
    watch = ThresholdWatch(meta)
    assert watch.poll(current) is None  # nothing changed
    _rewrite(meta, {**BLOCK, "image": 25.0, "normalization": {"min": 10.0, "threshold": 25.0, "max": 40.0}})
    new = watch.poll(current)
    assert new.threshold == 25.0 and new.normalize(25.0) == 0.5 and watch.poll(new) is None
    _rewrite(meta, {**BLOCK, "image": float("nan")})
    assert watch.poll(new) is None and "thresholds.image" in watch.error and "keeping threshold 25.0" in watch.error
    meta.write_text("{not json")
    assert watch.poll(new) is None and "cannot be used" in watch.error
    # an override stays in force; the rest (pixel threshold) follows the file
    meta.write_text(json.dumps({"thresholds": BLOCK}))
    pinned = ThresholdWatch(meta, override=7.0)
    _rewrite(meta, {**BLOCK, "pixel": 18.0})
    followed = pinned.poll(Decision.from_thresholds(BLOCK, override=7.0))
    assert followed.threshold == 7.0 and followed.pixel_threshold == 18.0 and math.isfinite(followed.since)


def test_threshold_watch_of_an_artifact_refuses_a_changed_contract(graph_artifact):
    """A running inspector follows a re-calibration, but not a metadata.json whose contract changed."""
    from anomedge.artifact import Artifact, write_metadata

    artifact = Artifact.load(graph_artifact)
    current = Decision.from_thresholds(artifact.metadata.thresholds)
    watch = ThresholdWatch(graph_artifact / "metadata.json", artifact=artifact)
    with Artifact.edit(graph_artifact) as edit:
        edit.meta["thresholds"] = {"image": 3.5}
    assert watch.poll(current).threshold == 3.5
    meta = json.loads((graph_artifact / "metadata.json").read_text())
    meta["thresholds"] = {"image": 4.5}
    meta["scoring"]["k"] = 2  # a contract change, re-hashed as a tool would: needs a restart
    write_metadata(graph_artifact, meta)
    assert watch.poll(current) is None and "contract changed" in watch.error
