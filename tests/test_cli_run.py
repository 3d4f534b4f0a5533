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


# --- trust: fail closed, pixel budget, full disk, readable output, live re-calibration ---------------------
def forged_copy(tiny_artifact, tmp_path, thresholds=None, bank=None):
    """A copy of the artifact with another thresholds block and/or bank (its sha256 updated)."""
    import hashlib

    art = tmp_path / "forged"
    shutil.copytree(tiny_artifact.root, art)
    meta = json.loads((art / "metadata.json").read_text())
    if thresholds is not None:
        meta["thresholds"] = thresholds
    if bank is not None:
        np.save(art / "bank.npy", bank(np.load(art / "bank.npy")))
        meta["files"]["bank.npy"] = hashlib.sha256((art / "bank.npy").read_bytes()).hexdigest()
    (art / "metadata.json").write_text(json.dumps(meta))  # json writes NaN / Infinity as given
    return art


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_threshold_option_is_one_line_exit_2(tiny_artifact, line_folder, value):
    result = ad_run(tiny_artifact.root, "--source", line_folder, "--threshold", value, "--quiet")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: --threshold"), result.stderr


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_threshold_in_metadata_is_refused_at_load(tiny_artifact, line_folder, tmp_path, value):
    art = forged_copy(tiny_artifact, tmp_path, {**tiny_artifact.metadata.thresholds, "image": value})
    result = ad_run(art, "--source", line_folder, "--quiet")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "image" in lines[0] and "Traceback" not in result.stderr


def test_a_model_that_outputs_nan_gives_error_records_never_ok(tiny_artifact, line_folder, tmp_path):
    art = forged_copy(tiny_artifact, tmp_path, bank=lambda b: np.full_like(b, np.nan))
    out = tmp_path / "d.jsonl"
    result = ad_run(art, "--source", line_folder, "--jsonl", out, "--quiet")
    if result.returncode == 2:  # refused at load (non-finite bank): fail closed too
        assert len(result.stderr.strip().splitlines()) == 1
        return
    assert result.returncode == 0, result.stderr
    records = [json.loads(l) for l in out.read_text().splitlines()]
    assert len(records) == 6 and {r["label"] for r in records} == {"ERROR"}
    assert sum("non-finite" in r["error"] for r in records) == 4 and all(r.get("score") is None for r in records)
    assert "6 errors" in result.stdout
    ng = ad_run(art, "--source", line_folder, "--jsonl", tmp_path / "ng.jsonl", "--quiet", "--on-error", "ng")
    assert {json.loads(l)["label"] for l in (tmp_path / "ng.jsonl").read_text().splitlines()} == {"NG"}
    assert "6 NG (6 of them on error), 0 errors" in ng.stdout


def test_over_the_pixel_budget_is_an_error_record_and_the_run_goes_on(tiny_artifact, line_folder, tmp_path):
    from test_imageio import png_bomb

    (line_folder / "bomb.png").write_bytes(png_bomb(3000, 2000))
    out = tmp_path / "d.jsonl"
    result = ad_run(tiny_artifact.root, "--source", line_folder, "--jsonl", out, "--quiet", "--max-pixels", "5000000")
    assert result.returncode == 0, result.stderr
    records = {Path(r["source"]).name: r for r in map(json.loads, out.read_text().splitlines())}
    assert records["bomb.png"]["label"] == "ERROR" and "3000×2000 = 6.0 Mpx" in records["bomb.png"]["error"]
    assert sum(r["label"] in ("OK", "NG") for r in records.values()) == 4 and "7 frames" in result.stdout


def test_stdout_has_one_readable_line_per_frame_and_json_only_with_json(tiny_artifact, line_folder, tmp_path):
    import re

    plain = ad_run(tiny_artifact.root, "--source", line_folder)
    lines = plain.stdout.strip().splitlines()
    assert plain.returncode == 0 and len(lines) == 6
    pattern = re.compile(r"^frame (\d+)  (\S+)  (OK|NG)  score [-\d.e+]+ \(thr [-\d.e+]+\)  [\d.]+ ms|"
                         r"^frame (\d+)  (\S+)  ERROR  .*not a readable image")
    assert all(pattern.match(line) for line in lines), lines
    assert "6 frames" in plain.stderr  # the summary goes to stderr, records to stdout
    as_json = ad_run(tiny_artifact.root, "--source", line_folder, "--json")
    assert [json.loads(line)["index"] for line in as_json.stdout.splitlines()] == list(range(6))


def _limit_file_size(limit):
    def apply():
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # stays ignored across exec
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_full_disk_ends_the_run_with_one_line_the_summary_and_exit_1(tiny_artifact, line_folder, tmp_path):
    out = tmp_path / "d.jsonl"
    code = "from anomedge.cli.run import main; main()"
    result = subprocess.run([sys.executable, "-c", code, str(tiny_artifact.root), "--source", str(line_folder),
                             "--jsonl", str(out), "--quiet"], capture_output=True, text=True, timeout=120,
                            preexec_fn=_limit_file_size(700))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: cannot write the decision record (File too large); check free space and permissions of the output files"]
    text = out.read_text()
    records = [json.loads(line) for line in text.splitlines()]
    assert text.endswith("\n") and 0 < len(records) < 6
    assert f"{len(records)} frames:" in result.stdout  # the summary counts exactly what was written


def test_a_running_ad_run_follows_a_recalibration(tiny_artifact, elpv_paths, tmp_path):
    import os
    import signal
    import time

    art = forged_copy(tiny_artifact, tmp_path, {"image": 1e9})  # everything OK
    hot = tmp_path / "hot"
    hot.mkdir()
    out = tmp_path / "d.jsonl"
    shutil.copy(elpv_paths[30], hot / "a.png")
    code = "from anomedge.cli.run import main; main()"
    proc = subprocess.Popen([sys.executable, "-c", code, str(art), "--source", str(hot), "--watch", "--settle-s", "0.1",
                             "--jsonl", str(out), "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def wait_records(n):
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if out.exists() and len(out.read_text().splitlines()) >= n:
                    return [json.loads(l) for l in out.read_text().splitlines()]
                time.sleep(0.1)
            raise AssertionError(f"no {n} records")

        assert wait_records(1)[0]["label"] == "OK"
        meta = json.loads((art / "metadata.json").read_text())
        meta["thresholds"] = {"image": -1e9, "pixel": 1e9}
        (art / "metadata.tmp").write_text(json.dumps(meta))
        os.replace(art / "metadata.tmp", art / "metadata.json")  # as ad-calibrate writes it
        shutil.copy(elpv_paths[31], hot / "b.png")
        second = wait_records(2)[1]
        assert second["label"] == "NG" and second["threshold"] == -1e9 and second["boxes"] == []
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert "threshold 1000000000.0 → -1000000000.0" in stderr and proc.returncode == 0
