"""Ignore masks (scoring.mask, ad-mask): a drawn defect under the mask no longer makes NG, the image score
is the reduction over the unmasked cells, wrong masks are refused with one line, the torch reference
applies the same mask, and the overlay hatches the region."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from anomedge.artifact import Artifact
from anomedge.cli.mask import clear_mask, main as ad_mask, write_mask
from anomedge.errors import ArtifactError
from anomedge.runtime.overlay import overlay
from anomedge.runtime.pipeline import Inspector
from anomedge.runtime.verify import verify_inspector
from anomedge.scoring.mask import IgnoreMask, masked_postprocess
from anomedge.scoring.postprocess import REDUCTIONS, anomaly_maps

CORNER = [[[0, 0], [36, 0], [36, 36], [0, 36]]]  # model pixels (64×64 input): the top-left corner


def _with_defect(path, centre):
    frame = cv2.imread(str(path))  # 300×300 ELPV cell
    cv2.circle(frame, centre, 30, (255, 255, 255), -1)
    return frame


def test_masked_defect_no_longer_ng_but_an_unmasked_one_still_is(artifact_copy, elpv_paths):
    with Inspector(Artifact.load(artifact_copy), "onnxruntime") as before:
        clean = before.inspect([cv2.imread(str(p)) for p in elpv_paths[20:30]]).scores
        good = [p for p, s in zip(elpv_paths[20:30], clean) if before.decide(s) == "OK"][:4]
        assert len(good) == 4  # held-out cells the model passes as they are
        frames = [_with_defect(p, (60, 60)) for p in good]  # defect in the corner that gets masked
        others = [_with_defect(p, (230, 230)) for p in good]  # defect elsewhere
        assert [before.decide(s) for s in before.inspect(frames).scores] == ["NG"] * 4
    result = CliRunner().invoke(ad_mask, [str(artifact_copy), "--polygons", json.dumps(CORNER)])
    assert result.exit_code == 0, result.output
    assert "33.4% of the 64×64 input ignored" in result.output  # 37×37 of 64×64
    with Inspector(Artifact.load(artifact_copy), "onnxruntime") as after:
        masked = after.inspect(frames)
        assert [after.decide(s) for s in masked.scores] == ["OK"] * 4
        assert np.all(masked.maps[:, :37, :37] == 0)  # no box or pixel threshold can fire there
        assert [after.decide(s) for s in after.inspect(others).scores] == ["NG"] * 4
        # ad-verify compares the golden frames (recorded without a mask) with the mask bypassed: still pass
        assert verify_inspector(after).status == "pass"


def test_image_score_is_the_reduction_over_the_unmasked_cells(graph_artifact):
    mask = np.zeros((32, 32), np.uint8)
    mask[:, :12] = 1  # 12 of the 32 columns: patch columns 0 (fully) and 1 (half: ignored) of 4
    write_mask(graph_artifact, mask)
    frames = [np.random.default_rng(i).integers(0, 256, (40, 40, 3), np.uint8) for i in range(3)]
    with Inspector(Artifact.load(graph_artifact), "onnxruntime") as inspector:
        s = inspector.stages
        patch = s.score(s.infer(s.preprocess(frames)))
        result = inspector.inspect(frames)
    assert patch.shape[1:] == (4, 4)
    want = REDUCTIONS["top_fraction_mean"](patch[:, :, 2:].reshape(len(frames), -1), fraction=0.1)
    np.testing.assert_allclose(result.scores, want, rtol=1e-6)
    full = anomaly_maps(np.where(np.arange(4) >= 2, patch, 0), (32, 32), 1.0)
    np.testing.assert_allclose(result.maps[:, :, 12:], full[:, :, 12:], rtol=1e-6)
    assert np.all(result.maps[:, :, :12] == 0)


def test_wrong_size_mask_refused_with_one_line(graph_artifact, tmp_path):
    png = tmp_path / "mask.png"
    cv2.imwrite(str(png), np.full((48, 64), 255, np.uint8))
    result = CliRunner().invoke(ad_mask, [str(graph_artifact), "--set", str(png)])
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0
    assert "mask is 64×48 px, expected 32×32" in result.stderr
    assert "ignore_mask" not in Artifact.load(graph_artifact).metadata.postprocess  # nothing written


def test_mask_that_ignores_everything_refused(graph_artifact):
    with pytest.raises(Exception, match="ignores every pixel"):
        write_mask(graph_artifact, np.ones((32, 32), np.uint8))


def test_hand_swapped_mask_refused_at_load_and_clear_restores(graph_artifact):
    mask = np.zeros((32, 32), np.uint8)
    mask[:8, :8] = 1
    write_mask(graph_artifact, mask)
    name = Artifact.load(graph_artifact).metadata.postprocess["ignore_mask"]
    np.save(graph_artifact / name, np.zeros((32, 32), np.uint8), allow_pickle=False)
    with pytest.raises(ArtifactError, match="sha256"):
        Artifact.load(graph_artifact)
    np.save(graph_artifact / name, mask, allow_pickle=False)  # restore, then clear
    assert clear_mask(graph_artifact)
    loaded = Artifact.load(graph_artifact)
    assert "ignore_mask" not in loaded.metadata.postprocess and name not in loaded.metadata.files
    assert not (graph_artifact / name).exists()


def test_torch_reference_applies_the_same_mask(artifact_copy, elpv_paths):
    pytest.importorskip("torch")
    write_mask(artifact_copy, _corner_mask())
    frames = [_with_defect(p, (60, 60)) for p in elpv_paths[20:23]]
    artifact = Artifact.load(artifact_copy)
    with Inspector(artifact, "torch") as ref, Inspector(artifact, "onnxruntime") as run:
        r, o = ref.inspect(frames), run.inspect(frames)
    np.testing.assert_allclose(o.scores, r.scores, rtol=1e-4)
    span = float(np.ptp(r.maps))
    assert np.abs(o.maps - r.maps).max() <= 1e-4 * span
    assert np.all(r.maps[:, :37, :37] == 0)


def test_overlay_hatches_only_the_ignored_region(chelsea_bgr):
    frame = cv2.resize(chelsea_bgr, (64, 64))
    heat = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    ignored = _corner_mask().astype(bool)
    plain, hatched = overlay(frame, heat, 0, 1), overlay(frame, heat, 0, 1, ignored=ignored)
    assert np.array_equal(plain[~ignored], hatched[~ignored])
    yy, xx = np.indices((64, 64))
    between = ignored & ((xx + yy) % 8 >= 2)  # not on a hatch line: dimmed to 40 %
    np.testing.assert_array_equal(hatched[between], (plain[between] * 0.4).astype(np.uint8))
    assert np.any(np.all(hatched[ignored] == (200, 200, 200), axis=1))


def test_masked_postprocess_reference_values():
    """Hand-checkable: 2×2 patch grid, max reduction, the left column ignored."""
    patch = np.array([[[9.0, 1.0], [7.0, 2.0]]], np.float32)
    mask = IgnoreMask(np.zeros((4, 4), bool))
    mask.pixels[:, :2] = True
    scores, maps = masked_postprocess(patch, mask, (4, 4), 0.0, {"name": "max"})
    assert scores.tolist() == [2.0]
    assert np.all(maps[0, :, :2] == 0) and maps[0, :, 2:].max() <= 2.0


def _corner_mask() -> np.ndarray:
    mask = np.zeros((64, 64), np.uint8)
    mask[:37, :37] = 1
    return mask


def test_graph_placement_applies_the_same_mask(artifact_copy, elpv_paths):
    """Placement graph (scoring inside model.graph.onnx) hands patch scores to the same masked postprocess."""
    pytest.importorskip("onnx")
    from anomedge.export.writer import add_graph_placement

    add_graph_placement(artifact_copy)
    write_mask(artifact_copy, _corner_mask())
    frames = [_with_defect(p, (60, 60)) for p in elpv_paths[20:23]]
    artifact = Artifact.load(artifact_copy)
    with Inspector(artifact, "onnxruntime", placement="host", knn_kernel="numpy") as host, \
            Inspector(artifact, "onnxruntime", placement="graph") as graph:
        h, g, plain = host.inspect(frames), graph.inspect(frames), graph.inspect(frames, ignore_mask=False)
    np.testing.assert_allclose(g.scores, h.scores, rtol=1e-4)
    assert np.abs(g.maps - h.maps).max() <= 1e-4 * float(np.ptp(h.maps))
    assert np.all(g.maps[:, :37, :37] == 0) and np.all(plain.maps[:, :37, :37] > 0)
    assert np.all(g.scores < plain.scores)  # the corner defect no longer counts
