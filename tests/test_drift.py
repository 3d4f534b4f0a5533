"""Drift watch (runtime.drift): reference values of the statistics, and a real shift — ELPV cells streamed
through a calibrated artifact, then the same cells darkened ×0.5 / blurred: the alarm comes after the
shift, never before, in the records, the warning log, /api/status-style status and /metrics."""

from __future__ import annotations

import logging
import math
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from anomedge.artifact import Artifact
from anomedge.calibrate.apply import calibrate
from anomedge.runtime.drift import (DriftWatch, calibration_block, input_stats, ks_critical, ks_statistic, psi,
                                    wilson)
from anomedge.runtime.outputs import WebhookOutput
from anomedge.runtime.pipeline import Inspector
from anomedge.runtime.runner import Runner
from anomedge.runtime.serve import LiveView
from anomedge.runtime.serve.view import drift_metrics
from anomedge.runtime.sources import Frame

from conftest import elpv_image_paths
from serve_util import body_of, request


def test_statistics_reference_values():
    # Wilson 95 % for 5/100 (z = 1.96): 0.0215 … 0.1118 (Newcombe 1998, table I)
    low, high = wilson(5, 100, 1.96)
    assert (round(low, 4), round(high, 4)) == (0.0215, 0.1118)
    a, b = np.arange(10.0), np.arange(10.0) + 5
    assert ks_statistic(a, b) == pytest.approx(0.5)  # F_a − F_b peaks at 0.5 between 4 and 5
    assert ks_statistic(a, a) == 0.0
    assert ks_critical(100, 100, 0.05) == pytest.approx(1.3581 * math.sqrt(0.02), rel=1e-3)
    ref = np.random.default_rng(0).normal(size=5000)
    assert psi(ref, ref) == pytest.approx(0.0, abs=1e-9)
    assert psi(ref, ref + 1.0) > 0.25 > psi(ref, np.random.default_rng(1).normal(size=5000))


def test_input_stats_reference_values():
    image = np.zeros((20, 20), np.uint8)
    image[:, 10:] = 200
    brightness, contrast, focus = input_stats(image)
    assert brightness == pytest.approx(100.0) and contrast == pytest.approx(100.0)
    lap = cv2.Laplacian(image, cv2.CV_64F)
    assert focus == pytest.approx(lap.var())
    assert input_stats(cv2.GaussianBlur(image, (0, 0), 2))[2] < 0.2 * focus


def test_watch_stays_quiet_in_distribution_and_alarms_on_a_score_shift():
    rng = np.random.default_rng(3)
    block = calibration_block(rng.normal(10, 1, 400), None)
    watch = DriftWatch(block, window=100, min_frames=50)
    records = [{"index": i, "label": "OK", "score": float(s), "threshold": 13.0} for i, s in enumerate(rng.normal(10, 1, 150))]
    assert all(watch.update(r, None) is None for r in records)
    shifted = [{"index": 150 + i, "label": "OK", "score": float(s), "threshold": 13.0} for i, s in enumerate(rng.normal(11.5, 1, 100))]
    alarms = [watch.update(r, None) for r in shifted]
    first = next(i for i, a in enumerate(alarms) if a is not None)
    assert 5 <= first <= 60 and "score" in alarms[-1]["checks"]


def test_drift_block_is_schema_checked(graph_artifact):
    from anomedge.artifact.schema import SchemaError

    with pytest.raises(SchemaError, match=r"thresholds.drift.scores\[1\] is nan"):
        with Artifact.edit(graph_artifact) as edit:
            edit.meta["thresholds"]["drift"] = {"scores": [1.0, float("nan")]}
    with pytest.raises(SchemaError, match=r"thresholds.drift.inputs.focus.band is \[1.0\], expected a list of 2"):
        with Artifact.edit(graph_artifact) as edit:
            edit.meta["thresholds"]["drift"] = {"scores": [1.0], "inputs": {"focus": {"median": 1.0, "band": [1.0]}}}
    assert "drift" not in Artifact.load(graph_artifact).metadata.thresholds  # nothing written


@pytest.fixture(scope="module")
def calibrated(tiny_artifact, tmp_path_factory):
    """tiny_artifact's copy calibrated (quantile) on 100 held-out ELPV cells; 100 more to stream."""
    import shutil

    root = tmp_path_factory.mktemp("drift") / "artifact"
    shutil.copytree(tiny_artifact.root, root, ignore=shutil.ignore_patterns(".cache"))
    paths = elpv_image_paths(240)
    calibrate(root, paths[40:140], "quantile", q=0.99)
    return root, paths[140:240]


def _stream(root, frames, window=100):
    with Inspector(Artifact.load(root), "onnxruntime") as inspector:
        runner = Runner(inspector, watch_thresholds=False, drift_options={"window": window, "min_frames": 50})
        records = [runner.process(Frame("cam", i, float(i), f)) for i, f in enumerate(frames)]
    return runner, records


@pytest.mark.slow
@pytest.mark.parametrize("shift, check", [
    (lambda f: (f * 0.5).astype(np.uint8), "brightness"),
    (lambda f: cv2.GaussianBlur(f, (0, 0), 2.5), "focus"),
])
def test_real_shift_raises_the_alarm_after_it_not_before(calibrated, caplog, shift, check):
    root, paths = calibrated
    block = Artifact.load(root).metadata.thresholds["drift"]
    assert len(block["scores"]) == 100 and set(block["inputs"]) == {"brightness", "contrast", "focus"}
    good = [cv2.imread(str(p)) for p in paths]
    with caplog.at_level(logging.WARNING, logger="anomedge.drift"):
        runner, records = _stream(root, good + [shift(f) for f in good])
    before, after = records[:100], records[100:]
    assert not any("drift" in r for r in before)
    alarmed = [i for i, r in enumerate(after) if "drift" in r]
    assert alarmed and alarmed[0] <= 60 and check in after[-1]["drift"]["checks"]
    assert [i for i, r in enumerate(records) if "drift_event" in r][:1] == [100 + alarmed[0]]
    only_ng = SimpleNamespace(only_ng=True)  # the webhook's filter, without starting its sender thread
    assert WebhookOutput.wanted(only_ng, after[alarmed[0]])  # the alarm record is sent, NG or not
    assert not any("drift_event" in r for r in before)
    assert check in after[-1]["drift"].get("inputs", {})
    warnings = [m for m in caplog.messages if "out of the calibration band" in m]
    assert len(warnings) >= 1 and f"at frame {100 + alarmed[0]}" in warnings[0]
    view = LiveView(runner, {"artifact": "tiny", "backend": "onnxruntime"}, "127.0.0.1", 0).start()
    try:  # the real server: /api/status and /metrics
        status = body_of(request(view.port, "GET", "/api/status"))["drift"]
        metrics = request(view.port, "GET", "/metrics").decode()
    finally:
        view.close()
    assert status["alarm"] and status["alarms"] >= 1 and check in status["in_alarm"]
    assert status["inputs"][check]["median"] < status["inputs"][check]["band"][0]  # darker / blurrier
    assert f'anomedge_drift_alarm{{check="{check}"}} 1' in metrics and "anomedge_drift_score_ks " in metrics
    assert metrics == metrics.rstrip("\n") + "\n" and "\n".join(drift_metrics(runner.drift.status())) in metrics
