"""Golden frames and ad-verify: the proof on the target, and the tamper it catches that hashes cannot.

Tolerances under test are the shipped ones (runtime.verify.FP32: 1e-4 relative on scores, 1e-3 of
the map range, identical decisions); the tampered bank must push the scores far outside them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from anomedge.artifact import METADATA, Artifact, write_metadata
from anomedge.cli.verify import main as ad_verify
from anomedge.runtime.pipeline import Inspector
from anomedge.runtime.verify import FP32, GOLDEN_FILES, golden, parity, run_golden

from conftest import rehash


def test_golden_frames_round_trip(tiny_artifact):
    gold = golden(tiny_artifact)
    spec = tiny_artifact.metadata.input
    n = len(gold.scores)
    assert 2 <= n <= 8 and gold.frames.shape == (n, spec.height, spec.width, 3) and gold.frames.dtype == np.uint8
    assert gold.maps.shape == (n, spec.height, spec.width) and gold.reference == "torch"
    assert all(name in tiny_artifact.metadata.files for name in GOLDEN_FILES.values())  # hashed like every file
    with Inspector(tiny_artifact, "torch") as ref:  # the stored numbers are the reference's, reproducibly
        scores, maps = run_golden(ref, list(gold.frames))
    np.testing.assert_allclose(scores, gold.scores, rtol=1e-6)
    np.testing.assert_allclose(maps, gold.maps, rtol=1e-6, atol=1e-6 * float(np.ptp(gold.maps)))
    with Inspector(tiny_artifact, "onnxruntime", knn_kernel="numpy") as run:
        p = parity(gold.scores, gold.maps, *run_golden(run, list(gold.frames)), run.threshold)
    assert p.max_rel_score_diff < FP32.score_rel and p.max_map_diff < FP32.map and p.decision_agreement == 1.0


def test_ad_verify_passes_on_a_fresh_artifact(tiny_artifact):
    result = CliRunner().invoke(ad_verify, [str(tiny_artifact.root), "--json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output)
    assert (row["backend"], row["precision"], row["placement"], row["status"]) == ("onnxruntime", "fp32", "host", "pass")
    assert row["parity"]["max_rel_score_diff"] < 1e-4


def test_ad_verify_all_prints_a_row_per_backend(tiny_artifact):
    result = CliRunner().invoke(ad_verify, [str(tiny_artifact.root), "--all"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:4] == ["backend", "precision", "placement", "kernel"]
    rows = {tuple(line.split()[:4]): line for line in lines[2:]}
    for key in [("torch", "fp32", "host", "-"), ("onnxruntime", "fp32", "host", "numpy"),
                ("onnxruntime", "fp32", "host", "onnxruntime")]:
        assert " pass" in rows[key], result.output


def _nearest_row(root) -> int:
    """The bank row that is the nearest neighbour of most patches of the first golden frame."""
    from anomedge.scoring.kernels import KnnIndex

    artifact = Artifact.load(root)
    with Inspector(artifact, "onnxruntime", knn_kernel="numpy") as run:
        feats = run.stages.infer(run.stages.preprocess([golden(artifact).frames[0]]))["features"]
    queries = np.ascontiguousarray(feats.transpose(0, 2, 3, 1).reshape(-1, feats.shape[1]))
    rows = KnnIndex(artifact.array("bank.npy")).search_with_index(queries, 1)[1][:, 0]
    return int(np.bincount(rows).argmax())


def _perturb_a_bank_row(root) -> None:
    """Move the most used bank row by 3 standard deviations and update its hash: a tamper hashing cannot see."""
    row = _nearest_row(root)
    bank = np.load(root / "bank.npy")
    bank[row] += 3.0 * bank.std()
    np.save(root / "bank.npy", bank)
    rehash(root, "bank.npy")


def test_ad_verify_fails_when_a_bank_row_is_perturbed_and_its_hash_updated(artifact_copy):
    _perturb_a_bank_row(artifact_copy)
    Artifact.load(artifact_copy)  # the hashes alone see nothing wrong
    result = CliRunner().invoke(ad_verify, [str(artifact_copy), "--knn-kernel", "numpy"])
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.output and "outside tolerance" in result.output


def test_ad_verify_without_golden_frames_is_one_line_exit_2(artifact_copy):
    meta = json.loads((artifact_copy / METADATA).read_text())
    del meta["model"]["golden"]
    write_metadata(artifact_copy, meta)  # as an older exporter wrote it (spec re-hashed)
    result = CliRunner().invoke(ad_verify, [str(artifact_copy)])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "no golden frames" in result.stderr and "ad-export" in result.stderr


def test_variant_records_its_measured_tolerance_and_verifies(artifact_copy):
    pytest.importorskip("onnx")
    from anomedge.export.precision import add_variant

    add_variant(artifact_copy, "fp16")
    params = Artifact.load(artifact_copy).metadata.model["variant_params"]["fp16"]["verify_tolerance"]
    measured, tol = params["measured"], params["tolerance"]
    assert measured["max_rel_score_diff"] > 0  # fp16 really differs from the float32 reference …
    assert tol["score_rel"] == pytest.approx(max(2 * measured["max_rel_score_diff"], 1e-4))  # … and the margin is 2×
    result = CliRunner().invoke(ad_verify, [str(artifact_copy), "--precision", "fp16", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)[0]["status"] == "pass"


def _ad_run(root, *args, pythonpath=None):
    env = {**os.environ, **({"PYTHONPATH": pythonpath} if pythonpath else {})}
    return subprocess.run([sys.executable, "-c", "from anomedge.cli.run import main; main()", str(root), *map(str, args)],
                          capture_output=True, text=True, timeout=120, env=env)


def test_ad_run_without_onnx_runs_the_onnxruntime_kernel(tiny_artifact, elpv_paths, no_onnx_pythonpath, tmp_path):
    probe = subprocess.run([sys.executable, "-c", "import onnx"], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": no_onnx_pythonpath})
    assert probe.returncode != 0  # the shim really hides onnx
    out = tmp_path / "d.jsonl"
    result = _ad_run(tiny_artifact.root, "--source", elpv_paths[30], "--knn-kernel", "onnxruntime", "--jsonl", out,
                     "--quiet", pythonpath=no_onnx_pythonpath)
    assert result.returncode == 0, result.stderr
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    with Inspector(tiny_artifact, "torch") as ref:
        from anomedge.runtime.preprocess import read_image

        expected = float(ref.inspect([read_image(elpv_paths[30])]).scores[0])
    assert record["score"] == pytest.approx(expected, rel=1e-4)


def test_ad_run_refuses_a_tampered_bank_unless_skip_verify(artifact_copy, elpv_paths):
    _perturb_a_bank_row(artifact_copy)
    refused = _ad_run(artifact_copy, "--source", elpv_paths[30], "--knn-kernel", "numpy", "--quiet")
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and "start-up verification failed" in refused.stderr
    assert "--skip-verify" in refused.stderr
    forced = _ad_run(artifact_copy, "--source", elpv_paths[30], "--knn-kernel", "numpy", "--quiet", "--skip-verify")
    assert forced.returncode == 0, forced.stderr


def test_ad_run_without_golden_frames_warns_and_continues(artifact_copy, elpv_paths):
    meta = json.loads((artifact_copy / METADATA).read_text())
    del meta["model"]["golden"]
    write_metadata(artifact_copy, meta)  # as an older exporter wrote it (spec re-hashed)
    result = _ad_run(artifact_copy, "--source", elpv_paths[30], "--quiet")
    assert result.returncode == 0, result.stderr
    assert "no golden frames" in result.stderr and "verification skipped" in result.stderr


def test_api_status_reports_the_start_up_verification(tiny_artifact):
    import signal
    import socket
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-c", "from anomedge.cli.run import main; main()", str(tiny_artifact.root),
                             "--serve", f"127.0.0.1:{port}", "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline, status = time.monotonic() + 90, None
        while status is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=2) as response:
                    status = json.loads(response.read())
            except OSError:
                time.sleep(0.3)
        assert status is not None, proc.stderr.read() if proc.poll() is not None else "no answer"
        verify = status["verify"]
        assert (verify["status"], verify["backend"], verify["precision"]) == ("pass", "onnxruntime", "fp32")
        assert verify["parity"]["max_rel_score_diff"] < 1e-4 and verify["parity"]["n"] == len(golden(tiny_artifact).scores)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


def test_an_old_artifact_is_upgraded_in_place(artifact_copy, elpv_paths):
    """python -m anomedge.export.writer ARTIFACT --golden …: knn.onnx and golden frames added, hashed, verified."""
    pytest.importorskip("onnx")
    from anomedge.export.writer import main as upgrade

    meta = json.loads((artifact_copy / METADATA).read_text())
    for name in ["knn.onnx", *GOLDEN_FILES.values()]:
        del meta["files"][name]
        (artifact_copy / name).unlink()
    del meta["model"]["golden"]
    write_metadata(artifact_copy, meta)  # as an older exporter wrote it (spec re-hashed)
    upgrade([str(artifact_copy), "--golden", *map(str, elpv_paths[20:24])])
    artifact = Artifact.load(artifact_copy)
    assert artifact.has("knn.onnx") and golden(artifact) is not None
    result = CliRunner().invoke(ad_verify, [str(artifact_copy), "--knn-kernel", "onnxruntime"])
    assert result.exit_code == 0 and " pass" in result.output, result.output


def test_a_flat_map_is_compared_relative_to_its_level():
    """Global baselines broadcast their score: a map flat to float32 rounding is held to the map tolerance
    relative to its level (the 1e-6-of-level fallback failed every global_knn / kmeans artifact)."""
    from anomedge.runtime.verify import parity

    ref = np.full((2, 8, 8), 20.0, np.float32)
    ref[:, 0, 0] += 3.8e-6  # one ulp of ptp, as the reference writes it
    scores = ref.max(axis=(1, 2))
    near = parity(scores, ref, scores * (1 + 2e-6), ref * np.float32(1 + 2e-6), None)
    assert near.max_map_diff < 1e-5
    off = parity(scores, ref, scores, ref * np.float32(1.01), None)
    assert abs(off.max_map_diff - 0.01) < 1e-4


def test_a_score_near_zero_is_held_to_the_scores_scale():
    """z-normalised (ensemble) scores cross zero: float32 noise on a score of 0.01 is not a 2e-4 error."""
    from anomedge.runtime.verify import parity

    ref = np.array([-5.74, -0.0116, 0.917, -10.65], np.float32)
    maps = np.zeros((4, 4, 4), np.float32)
    noise = parity(ref, maps, ref + np.float32(2.5e-6), maps, None)
    assert noise.max_rel_score_diff < 1e-4  # 2.5e-6 / (0.01 · 10.65) = 2.3e-5; 2.2e-4 relative to 0.0116
    real = parity(ref, maps, ref * np.float32(1.001), maps, None)
    assert abs(real.max_rel_score_diff - 1e-3) < 1e-5  # a relative error is still a relative error
