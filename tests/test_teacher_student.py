"""Teacher–student detector: fit → export → onnxruntime vs the PyTorch reference, the reference rebuilt
from metadata + safetensors, seeded training, the hard-feature loss against a naive sort, learning on a
tiny drawn-defect task, ad-verify, and parameter / weight-file errors.

Tolerances: runtime vs reference as ``ad-verify`` ships them (runtime.verify.FP32: 1e-4 relative on
image scores, 1e-3 of the map range, identical decisions); rebuilt graph vs the fitted one: bit-identical.
"""

from __future__ import annotations

import json
import zlib

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from anomedge.benchmark import parity, reference_and_runtime
from anomedge.calibrate.metrics import auroc
from anomedge.cli.verify import main as ad_verify
from anomedge.errors import ArtifactError, InputError
from anomedge.export.fit import fit_and_export
from anomedge.models.detector import get_detector
from anomedge.models.teacher_student import (TeacherStudent, TeacherStudentConfig, hard_feature_loss,
                                             load_trained_state, trained_state)
from anomedge.runtime.preprocess import preprocess, read_image
from anomedge.runtime.verify import FP32

TINY = {"image_size": 64, "widths": [16], "epochs": 2, "batch_size": 4, "amp": "fp32", "threads": 1,
        "val_fraction": 0.25}


@pytest.fixture(scope="module")
def ts_artifact(tmp_path_factory, elpv_paths):
    out = tmp_path_factory.mktemp("ts") / "art"
    return fit_and_export(elpv_paths[:12], "teacher_student", TINY, out, holdout=0.25, progress=False).artifact


@pytest.mark.slow  # fits and exports a real artifact (module fixture)
def test_registered_and_exported_as_one_map_graph(ts_artifact):
    assert get_detector("teacher_student") is TeacherStudent
    meta = ts_artifact.metadata
    assert meta.scoring["kind"] == "reconstruction" and meta.outputs["names"] == ["error"]
    assert meta.outputs["error"]["shape"] == ["N", 1, 8, 8] and meta.outputs["error"]["stride"] == 8
    assert "weights.safetensors" in meta.files and (ts_artifact.root / "loss_curve.png").is_file()
    q = meta.model["quantiles"]
    assert q["b"] > q["a"] and q["n_val"] == 2


@pytest.mark.slow  # fits and exports a real artifact (module fixture)
def test_runtime_matches_torch_reference(ts_artifact, elpv_paths):
    frames = [read_image(p) for p in elpv_paths[12:18]]
    ref_scores, ref_maps, scores, maps, threshold = reference_and_runtime(ts_artifact, frames)
    p = parity(ref_scores, ref_maps, scores, maps, threshold)
    assert p.max_rel_score_diff < FP32.score_rel, p
    assert p.max_map_diff < FP32.map, p
    assert p.decision_agreement == 1.0
    assert maps.shape == (6, 64, 64) and np.ptp(scores) > 0


@pytest.mark.slow  # fits and exports a real artifact (module fixture)
def test_rebuilt_graph_reproduces_the_fitted_one(ts_artifact, elpv_paths):
    """build_graph(metadata, artifact) = teacher from the backbone spec + student/stats from safetensors:
    the same outputs, bit for bit, as the graph the held-out quantiles were computed with."""
    meta = ts_artifact.metadata
    rebuilt = TeacherStudent.build_graph(meta.model, ts_artifact)
    x = torch.from_numpy(preprocess([read_image(p) for p in elpv_paths[20:24]], meta.input))
    stored = trained_state(rebuilt)
    fresh = TeacherStudent.make_graph(meta.model["architecture"])
    load_trained_state(fresh, ts_artifact.path("weights.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), fresh(x), rtol=0, atol=0)
        # the normalisation constants in the graph are those recorded in metadata
        assert float(stored["q_low"]) == pytest.approx(meta.model["quantiles"]["a"], rel=1e-6)
        # the map is 0.1·(d − a)/(b − a) of the raw distance
        raw = rebuilt.distance(x)
        expected = (raw - stored["q_low"]) * (0.1 / (stored["q_high"] - stored["q_low"]))
        torch.testing.assert_close(rebuilt(x), expected, rtol=1e-6, atol=1e-6)
    with pytest.raises(ArtifactError, match="pass the artifact"):
        TeacherStudent.build_graph(meta.model)


@pytest.mark.slow  # fits and exports a real artifact (module fixture)
def test_weights_for_another_architecture_are_refused(ts_artifact):
    arch = {**ts_artifact.metadata.model["architecture"], "widths": [24]}
    with pytest.raises(ArtifactError, match="weights.safetensors: weights do not fit"):
        TeacherStudent.build_graph({**ts_artifact.metadata.model, "architecture": arch}, ts_artifact)


@pytest.mark.slow  # fits and exports a real artifact (module fixture)
def test_ad_verify_passes(ts_artifact):
    result = CliRunner().invoke(ad_verify, [str(ts_artifact.root), "--json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output)
    assert row["status"] == "pass" and row["parity"]["max_rel_score_diff"] < FP32.score_rel


def test_training_is_seeded(elpv_paths):
    def run():
        d = TeacherStudent(TeacherStudentConfig(**{**TINY, "epochs": 1}), progress=False).fit(elpv_paths[:6])
        return d.history.step_loss, trained_state(d.module)

    (loss_a, state_a), (loss_b, state_b) = run(), run()
    assert loss_a == loss_b
    for key in state_a:
        torch.testing.assert_close(state_a[key], state_b[key], rtol=0, atol=0)


def test_hard_feature_loss_matches_a_sort():
    gen = torch.Generator().manual_seed(0)
    t, s = torch.randn(2, 5, 4, 4, generator=gen), torch.randn(2, 5, 4, 4, generator=gen)
    err = np.sort(((t - s) ** 2).flatten().numpy())
    for q in (0.0, 0.5, 0.9, 0.999):
        k = int(np.floor(q * (err.size - 1)))  # the (k+1)-th smallest error is the threshold
        expected = err[k:].mean() if q > 0 else err.mean()
        assert float(hard_feature_loss(t, s, q)) == pytest.approx(expected, rel=1e-6)


def _draw_spot(gray: np.ndarray, seed: int) -> np.ndarray:
    """A dark filled ellipse (one fifth of the side) at a seeded position."""
    rng = np.random.default_rng(seed)
    out = gray.copy()
    side = gray.shape[0]
    c = rng.integers(side // 4, 3 * side // 4, 2)
    cv2.ellipse(out, (int(c[0]), int(c[1])), (side // 10, side // 14), float(rng.uniform(0, 180)), 0, 360, 0, -1)
    return out


def test_it_learns_a_tiny_drawn_defect_task(elpv_paths):
    """Trained on 24 good cells, the student's mean squared distance to the teacher on them falls below
    half the untrained student's, and a dark spot drawn on held-out cells scores higher than the clean cell."""
    cfg = TeacherStudentConfig(**{**TINY, "epochs": 8, "lr": 3e-3, "widths": [32]})
    det = TeacherStudent(cfg, progress=False)
    train_x = torch.from_numpy(preprocess([read_image(p) for p in elpv_paths[:24]], det.input_spec()))
    with torch.no_grad():
        before = float(det.module.distance(train_x).mean())
    det.fit(elpv_paths[:24])
    with torch.no_grad():
        after = float(det.module.distance(train_x).mean())
    assert after < 0.5 * before, (before, after)
    held = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in elpv_paths[24:36]]
    bad = [_draw_spot(g, zlib.crc32(str(i).encode())) for i, g in enumerate(held)]
    with torch.no_grad():
        maps = det.graph()(torch.from_numpy(preprocess(held + bad, det.input_spec())))
    scores = maps.flatten(1).max(dim=1).values.numpy()
    labels = np.r_[np.zeros(len(held)), np.ones(len(bad))]
    assert auroc(labels, scores) >= 0.9, scores


@pytest.mark.parametrize("params, match", [
    ({"input_stage": 4}, "input_stage 4"),
    ({"widths": [16, 16]}, "student's grid"),
    ({"hard_quantile": 1.0}, "hard_quantile"),
    ({"q_a": 0.99, "q_b": 0.9}, "q_a"),
    ({"reduction": {"name": "median"}}, "reduction"),
    ({"widths": []}, "widths"),
])
def test_bad_parameters_are_one_line_input_errors(params, match):
    with pytest.raises(InputError, match=match):
        TeacherStudent(TeacherStudentConfig(**{**TINY, **params}), progress=False)


def test_too_few_images_for_the_quantile_holdout(elpv_paths):
    with pytest.raises(InputError, match="too few"):
        TeacherStudent(TeacherStudentConfig(**TINY), progress=False).fit(elpv_paths[:2])
