"""The run loop with a real artifact: failures are records (never OK), re-calibration switches the
decision at a frame boundary with a log line, the summary counts what was written."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time

import numpy as np
import pytest

from anomedge.artifact import Artifact
from anomedge.runtime.imageio import read_image
from anomedge.runtime.pipeline import Inspector
from anomedge.runtime.runner import Runner
from anomedge.runtime.sources import Frame


@pytest.fixture()
def artifact_copy(tiny_artifact, tmp_path):
    root = tmp_path / "art"
    shutil.copytree(tiny_artifact.root, root)
    return Artifact.load(root)


def frame(path, index=0):
    return Frame(str(path), index, time.time(), image=read_image(path))


def test_recalibration_switches_at_a_frame_boundary_and_is_logged(artifact_copy, elpv_paths, caplog):
    records = []
    with Inspector(artifact_copy) as inspector:
        runner = Runner(inspector, [records.append])
        first = runner.process(frame(elpv_paths[30]))
        old, since = runner.decision.threshold, runner.decision.since
        assert first["threshold"] == old == artifact_copy.metadata.thresholds["image"]
        meta_path = artifact_copy.root / "metadata.json"
        meta = json.loads(meta_path.read_text())
        meta["thresholds"] = {**meta["thresholds"], "image": first["score"] - 1e-3}
        meta["thresholds"].pop("normalization", None)
        (artifact_copy.root / "m.tmp").write_text(json.dumps(meta))
        os.replace(artifact_copy.root / "m.tmp", meta_path)
        with caplog.at_level(logging.WARNING, logger="anomedge"):
            second = runner.process(frame(elpv_paths[30], 1))
        assert second["threshold"] == pytest.approx(first["score"] - 1e-3) and second["label"] == "NG"
        assert second["score"] == pytest.approx(first["score"], rel=1e-6) and "score_normalized" not in second
        assert runner.decision.since > since and runner.threshold == second["threshold"]
        assert f"threshold {old} → {second['threshold']}" in caplog.text
        # a broken rewrite keeps the threshold in force, said once
        meta_path.write_text(json.dumps({**meta, "thresholds": {"image": "high"}}))
        with caplog.at_level(logging.WARNING, logger="anomedge"):
            third = runner.process(frame(elpv_paths[30], 2))
            runner.process(frame(elpv_paths[30], 3))
        assert third["threshold"] == second["threshold"] and caplog.text.count("cannot be used") == 1
    assert [r["index"] for r in records] == [0, 1, 2, 3]


def test_unusable_frames_are_records_never_ok(artifact_copy, elpv_paths):
    with Inspector(artifact_copy) as inspector:
        runner = Runner(inspector, watch_thresholds=False)
        bad_dtype = runner.process(Frame("f64", 0, 0.0, image=np.zeros((8, 8), np.float64)))
        no_image = runner.process(Frame("gone.png", 1, 0.0, error="gone.png: cannot read (vanished (no such file))"))
        good = runner.process(frame(elpv_paths[31], 2))
        assert bad_dtype["label"] == "ERROR" and "dtype float64" in bad_dtype["error"]
        assert no_image == {"source": "gone.png", "index": 1, "timestamp": 0.0, "label": "ERROR",
                            "error": "gone.png: cannot read (vanished (no such file))"}
        assert good["label"] in ("OK", "NG") and np.isfinite(good["score"])
        assert runner.summary.errors == 2 and runner.summary.frames == 3
        rejecting = Runner(inspector, on_error="ng", watch_thresholds=False)
        as_ng = rejecting.process(Frame("gone.png", 3, 0.0, error="gone"))
        assert as_ng["label"] == "NG" and as_ng["error"] == "gone" and "boxes" not in as_ng
        assert rejecting.summary.ng_on_error == 1 and "1 NG (1 of them on error), 0 errors" in rejecting.summary.line()
