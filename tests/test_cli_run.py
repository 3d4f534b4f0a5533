"""ad-run end to end: a folder with a corrupt file and a non-image, JSONL records, one-line errors."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


def ad_run(*args, cwd=None):
    code = "from anomedge.cli.run import main; main()"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


@pytest.fixture()
def line_folder(tmp_path, elpv_paths):
    folder = tmp_path / "line"
    folder.mkdir()
    for p in elpv_paths[30:34]:
        shutil.copy(p, folder / p.name)
    (folder / "zz_truncated.png").write_bytes(elpv_paths[35].read_bytes()[:300])
    (folder / "readme.txt").write_text("not an image")  # ignored: not an image suffix
    (folder / "yy_text.jpg").write_text("not a jpeg either")
    return folder


def test_folder_run_writes_a_record_per_image_and_keeps_going(tiny_artifact, line_folder, tmp_path):
    out = tmp_path / "decisions.jsonl"
    result = ad_run(tiny_artifact.root, "--source", line_folder, "--jsonl", out, "--quiet")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [Path(r["source"]).name for r in records] == sorted(p.name for p in line_folder.iterdir() if p.suffix != ".txt")
    good = [r for r in records if r["label"] != "ERROR"]
    errors = [r for r in records if r["label"] == "ERROR"]
    assert len(good) == 4 and len(errors) == 2
    assert all("not a readable image" in r["error"] for r in errors)
    threshold = tiny_artifact.metadata.thresholds["image"]
    for r in good:
        assert r["threshold"] == pytest.approx(threshold)
        assert r["label"] == ("NG" if r["score"] > threshold else "OK")
        assert set(r["ms"]) == {"preprocess", "infer", "score", "postprocess", "total"}
    assert "6 frames" in result.stdout and "2 errors" in result.stdout
    assert result.stderr == ""  # no library chatter: problems are in the records


def test_threshold_override_changes_decisions(tiny_artifact, line_folder, tmp_path):
    out = tmp_path / "d.jsonl"
    assert ad_run(tiny_artifact.root, "--source", line_folder, "--jsonl", out, "--threshold", "0", "--quiet").returncode == 0
    labels = {json.loads(l)["label"] for l in out.read_text().splitlines()}
    assert labels == {"NG", "ERROR"}


@pytest.mark.parametrize("case", ["empty_folder", "missing_file", "tampered", "no_artifact"])
def test_bad_inputs_stop_with_one_line(case, tiny_artifact, tmp_path, line_folder):
    art = tmp_path / "art"
    shutil.copytree(tiny_artifact.root, art)
    source = line_folder
    expect = {
        "empty_folder": "no images found",
        "missing_file": "model.onnx: listed in metadata.json but missing",
        "tampered": "bank.npy: sha256",
        "no_artifact": "no metadata.json",
    }[case]
    if case == "empty_folder":
        source = tmp_path / "empty"
        source.mkdir()
    elif case == "missing_file":
        (art / "model.onnx").unlink()
    elif case == "tampered":
        np.save(art / "bank.npy", np.load(art / "bank.npy")[:-1])
    elif case == "no_artifact":
        art = tmp_path / "nothing"
        art.mkdir()
    result = ad_run(art, "--source", source, "--quiet")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], result.stderr


def test_wrong_size_frames_are_resized_not_rejected(tiny_artifact, tmp_path, elpv_paths):
    import cv2

    folder = tmp_path / "sizes"
    folder.mkdir()
    gray = cv2.imread(str(elpv_paths[0]), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(folder / "a_small_gray.png"), cv2.resize(gray, (50, 70)))
    cv2.imwrite(str(folder / "b_bgra.png"), cv2.cvtColor(gray, cv2.COLOR_GRAY2BGRA))
    cv2.imwrite(str(folder / "c_16bit.png"), gray.astype(np.uint16) * 257)
    out = tmp_path / "d.jsonl"
    assert ad_run(tiny_artifact.root, "--source", folder, "--jsonl", out, "--quiet").returncode == 0
    records = [json.loads(l) for l in out.read_text().splitlines()]
    assert [r["label"] in ("OK", "NG") for r in records] == [True, True, True]
    assert records[1]["score"] == pytest.approx(records[2]["score"], rel=1e-3)  # same picture, other depth/channels
