"""ad-eval with ground-truth masks, recorded in the registry and read back with ad-runs; one-line
errors (exit 2) from ad-eval, ad-calibrate and ad-quantize that leave the artifact as it was."""

import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest


def cli(module, *args, env):
    code = f"from anomedge.cli.{module} import main; main()"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          timeout=180, env=env)


@pytest.fixture(scope="module")
def setup(tiny_artifact, tmp_path_factory, elpv_paths):
    """A copy of the artifact, an MVTec-layout folder with masks (and one with a mask of another
    size), a registry path of its own."""
    root = tmp_path_factory.mktemp("cli_eval")
    art = root / "art"
    shutil.copytree(tiny_artifact.root, art)
    for name, size in (("data", None), ("badmask", (100, 120))):
        for sub in ("train/good", "test/good", "test/crack", "ground_truth/crack"):
            (root / name / sub).mkdir(parents=True)
        shutil.copy(elpv_paths[0], root / name / "train/good")
        for p in elpv_paths[20:25]:
            shutil.copy(p, root / name / "test/good")
        for i, p in enumerate(elpv_paths[25:29]):
            image = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
            image[60:140, 80:200] = 255  # a bright "defect" the mask marks
            cv2.imwrite(str(root / name / "test/crack" / p.name), image)
            mask = np.zeros(size or image.shape, np.uint8)
            mask[60:140, 80:200] = 255
            cv2.imwrite(str(root / name / "ground_truth/crack" / f"{p.stem}_mask.png"), mask)
    env = {**os.environ, "ANOMEDGE_REGISTRY": str(root / "runs.sqlite")}
    return art, root, env


def test_eval_with_masks_reports_pixel_metrics_and_is_recorded(setup):
    art, root, env = setup
    result = cli("eval", art, "--data", root / "data", "--out", root / "report", env=env)
    assert result.returncode == 0, result.stderr
    assert "pixel AUROC" in result.stdout and "AUPRO" in result.stdout
    metrics = json.loads((root / "report" / "metrics.json").read_text())
    assert metrics["image"]["n_good"] == 5 and metrics["image"]["n_defect"] == 4
    assert 0 <= metrics["pixel"]["aupro"] <= 1 and metrics["pixel"]["pixel_auroc"] > 0.5  # bright blocks are found
    from anomedge.calibrate.report import BAR, HEADER

    triplet = cv2.imread(str(root / "report" / "worst_defective_0.png"), cv2.IMREAD_GRAYSCALE)[HEADER:]
    assert triplet.shape == (300, 900 + BAR) and triplet[100, 600 + 100] == 255 and triplet[10, 610] == 0  # mask panel
    assert "ad-eval: scoring: 100 % (9/9)" in result.stderr  # progress lines when piped
    listing = cli("runs", "list", "--kind", "eval", env=env)
    assert listing.returncode == 0 and listing.stdout.count("eval") >= 1
    run_id = listing.stdout.splitlines()[2].split()[0]
    shown = cli("runs", "show", run_id, env=env)
    assert f"{metrics['image']['auroc']}"[:6] in shown.stdout and "params.data" in shown.stdout


@pytest.mark.parametrize("case", ["one_class", "bad_mask"])
def test_eval_errors_are_one_line(setup, case, tmp_path):
    art, root, env = setup
    data = root / "badmask"
    if case == "one_class":
        data = tmp_path / "good_only"
        shutil.copytree(root / "data", data)
        shutil.rmtree(data / "test" / "crack")
        shutil.rmtree(data / "ground_truth")
    result = cli("eval", art, "--data", data, "--out", tmp_path / "r", env=env)
    assert result.returncode == 2
    lines = [l for l in result.stderr.strip().splitlines() if not l.startswith("ad-eval: scoring")]  # progress
    assert len(lines) == 1 and lines[0].startswith("error: ")
    if case == "bad_mask":
        assert "_mask.png: mask is 120×100, its image is 300×300" in lines[0]


def test_calibrate_with_bad_mask_leaves_metadata_byte_identical(setup):
    art, root, env = setup
    before = (art / "metadata.json").read_bytes()
    result = cli("calibrate", art, "--val", root / "badmask", "--method", "f1", env=env)
    assert result.returncode == 2 and "_mask.png: mask is 120×100" in result.stderr
    assert (art / "metadata.json").read_bytes() == before


def test_quantize_exclude_typo_is_one_line(setup):
    art, root, env = setup
    before = sorted(p.name for p in art.iterdir())
    result = cli("quantize", art, "--precision", "fp16", "--exclude", "conv_typo", env=env)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: model.onnx: no node named conv_typo")
    assert sorted(p.name for p in art.iterdir()) == before
