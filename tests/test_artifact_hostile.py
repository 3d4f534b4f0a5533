"""The hostile table (tests/artifact_cases.py) through ``ad-run``: every malformed artifact is exit 2 with one
line on stderr and no traceback; the untouched artifact runs (exit 0), so the table can fail."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from anomedge.cli.run import main as ad_run

from artifact_cases import CASES

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def frames(tmp_path) -> Path:
    folder = tmp_path / "frames"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), np.random.default_rng(0).integers(0, 255, (40, 40, 3), np.uint8))
    return folder


def _args(artifact: Path, frames: Path, *extra: str) -> list[str]:
    return [str(artifact), "--source", str(frames), "--quiet", *extra]


def test_untouched_artifact_runs(graph_artifact, frames):
    result = CliRunner().invoke(ad_run, _args(graph_artifact, frames))
    assert result.exit_code == 0, result.output
    assert "error" not in result.stderr


@pytest.mark.parametrize("name, mutate, message", CASES, ids=[c[0] for c in CASES])
def test_malformed_artifact_exit_2_one_line(graph_artifact, frames, name, mutate, message):
    mutate(graph_artifact)
    result = CliRunner().invoke(ad_run, _args(graph_artifact, frames))
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr


def test_require_signature_refuses_unsigned(graph_artifact, frames):
    result = CliRunner().invoke(ad_run, _args(graph_artifact, frames, "--require-signature"))
    assert result.exit_code == 2 and "not signed, and a signature is required" in result.stderr


def test_signed_artifact_runs_with_trust_and_is_refused_with_another_key(graph_artifact, frames, tmp_path):
    pytest.importorskip("cryptography", reason="signing needs the sign extra: pip install 'anomedge[sign]'")
    from anomedge.cli.sign import main as ad_sign

    runner = CliRunner()
    for name in ("key", "other"):
        assert runner.invoke(ad_sign, ["--keygen", str(tmp_path / name)]).exit_code == 0
    signed = runner.invoke(ad_sign, [str(graph_artifact), "--key", str(tmp_path / "key")])
    assert signed.exit_code == 0, signed.output
    ok = runner.invoke(ad_run, _args(graph_artifact, frames, "--trust", str(tmp_path / "key.pub")))
    assert ok.exit_code == 0, ok.output
    bad = runner.invoke(ad_run, _args(graph_artifact, frames, "--trust", str(tmp_path / "other.pub")))
    assert bad.exit_code == 2 and "not among the --trust keys" in bad.stderr
    check = runner.invoke(ad_sign, [str(graph_artifact), "--check", "--trust", str(tmp_path / "key.pub")])
    assert check.exit_code == 0 and "signature valid" in check.output


@pytest.mark.slow
def test_hostile_table_in_subprocesses(graph_artifact, frames, tmp_path):
    """The same table, each case a real ``ad-run`` process (about 1 s each): exit 2, one stderr line, no traceback."""
    import shutil

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    pristine = tmp_path / "pristine"
    shutil.copytree(graph_artifact, pristine)
    failures = []
    for name, mutate, message in CASES:
        shutil.rmtree(graph_artifact)
        shutil.copytree(pristine, graph_artifact)
        mutate(graph_artifact)
        proc = subprocess.run([sys.executable, "-c", "from anomedge.cli.run import main; main()",
                               *_args(graph_artifact, frames)],
                              capture_output=True, text=True, timeout=60, env=env)
        lines = proc.stderr.strip().splitlines()
        if proc.returncode != 2 or len(lines) != 1 or message not in lines[0] or "Traceback" in proc.stderr:
            failures.append((name, proc.returncode, proc.stderr[-300:]))
    assert not failures, failures
    assert len(CASES) >= 25


def test_graph_onnxruntime_refuses_is_one_line(graph_artifact, frames):
    """A well-formed protobuf (passes the load check) that onnxruntime cannot build: exit 2, one line."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from artifact_cases import replace_file

    graph = helper.make_graph([helper.make_node("Conv", ["image", "missing_weight"], ["features"])], "broken",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 32, 32])],
                              [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 4, 4, 4])])
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    replace_file("model.onnx", data)(graph_artifact)
    result = CliRunner().invoke(ad_run, _args(graph_artifact, frames))
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and "onnxruntime cannot load this graph" in lines[0], result.stderr


@pytest.mark.parametrize("args, message", [
    ([], "give exactly one of"),
    (["--keygen", "K", "ART"], "--keygen takes no ARTIFACT"),
    (["ART", "--key", "MISSING"], "cannot read the key"),
    (["ART", "--key", "NOTKEY"], "not an unencrypted PEM private key"),
    (["ART", "--key", "PUB"], "not an unencrypted PEM private key"),
    (["ART", "--check"], "not signed, and a signature is required"),
])
def test_ad_sign_usage_errors_are_one_line_exit_2(graph_artifact, tmp_path, args, message):
    pytest.importorskip("cryptography", reason="signing needs the sign extra: pip install 'anomedge[sign]'")
    from anomedge.artifact.signing import keygen
    from anomedge.cli.sign import main as ad_sign

    keygen(tmp_path / "k")
    (tmp_path / "notkey").write_text("hello")
    names = {"ART": str(graph_artifact), "K": str(tmp_path / "new"), "MISSING": str(tmp_path / "nope"),
             "NOTKEY": str(tmp_path / "notkey"), "PUB": str(tmp_path / "k.pub")}
    result = CliRunner().invoke(ad_sign, [names.get(a, a) for a in args])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and message in result.stderr, (result.exit_code, result.stderr)


@pytest.mark.slow
def test_ad_export_sign_then_ad_run_trust(elpv_paths, tmp_path, frames):
    """ad-export --sign writes a signature that ad-run --trust accepts (real PatchCore fit, 64 px, 12 cells)."""
    pytest.importorskip("cryptography", reason="signing needs the sign extra: pip install 'anomedge[sign]'")
    import shutil

    from anomedge.artifact.signing import keygen
    from anomedge.cli.export import main as ad_export

    good = tmp_path / "good"
    good.mkdir()
    for path in elpv_paths[:12]:
        shutil.copy(path, good / path.name)
    private, public = keygen(tmp_path / "key")
    out = tmp_path / "exported"
    runner = CliRunner()
    exported = runner.invoke(ad_export, [str(good), "--detector", "patchcore", "--image-size", "64", "--param",
                                         "coreset_fraction=0.25", "--out", str(out), "--sign", str(private), "--quiet"])
    assert exported.exit_code == 0, exported.output
    assert (out / "signature.json").is_file()
    ran = runner.invoke(ad_run, _args(out, frames, "--trust", str(public)))
    assert ran.exit_code == 0, ran.output
    wrong_key = runner.invoke(ad_export, [str(good), "--out", str(tmp_path / "never"), "--sign", str(public)])
    assert wrong_key.exit_code == 2 and "not an unencrypted PEM private key" in wrong_key.stderr
    assert not (tmp_path / "never").exists()  # refused before the fit
