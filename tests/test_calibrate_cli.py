"""ad-calibrate on a real artifact: methods, history, failures that leave metadata untouched, ad-runs."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest


def cli(module, *args, env=None):
    code = f"from anomedge.cli.{module} import main; main()"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          timeout=180, env=env)


@pytest.fixture()
def art(tiny_artifact, tmp_path):
    copy = tmp_path / "art"
    shutil.copytree(tiny_artifact.root, copy)
    return copy


@pytest.fixture()
def env(tmp_path, monkeypatch):
    import os

    return {**os.environ, "ANOMEDGE_REGISTRY": str(tmp_path / "runs.sqlite")}


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """MVTec-layout folder from real ELPV cells: test/good (defect-free) and test/crack (defective)."""
    from anomedge.datasets.elpv import elpv_root, read_labels

    root = tmp_path_factory.mktemp("val")
    rows = [r for r in read_labels(elpv_root()) if r[2] == "mono"]
    good = [p for p, prob, _ in rows if prob == 0][200:212]
    bad = [p for p, prob, _ in rows if prob == 1.0][:8]
    for sub, paths in (("train/good", good[:2]), ("test/good", good), ("test/crack", bad)):
        (root / sub).mkdir(parents=True)
        for p in paths:
            shutil.copy(p, root / sub / p.name)
    return root


def meta(path):
    return json.loads((path / "metadata.json").read_text())


def test_quantile_on_good_images_keeps_history(art, labelled, env):
    old = meta(art)["thresholds"]
    result = cli("calibrate", art, "--good", labelled / "test" / "good", "--q", "0.5", env=env)
    assert result.returncode == 0, result.stderr
    new = meta(art)["thresholds"]
    assert new["method"] == "quantile" and new["n_good"] == 12
    assert new["history"][0]["image"] == old["image"]
    assert "warning" in result.stderr and "12 good images" in result.stderr  # fewer than recommended
    from anomedge.artifact import Artifact

    Artifact.load(art)  # hashes still valid: only thresholds changed
    norm = new["normalization"]
    assert norm["threshold"] == pytest.approx(new["image"])


def test_f1_on_labelled_set_and_ad_run_uses_it_without_reexport(art, labelled, tmp_path, env):
    assert cli("calibrate", art, "--val", labelled, "--method", "f1", env=env).returncode == 0
    block = meta(art)["thresholds"]
    assert block["method"] == "f1" and block["n_defect"] == 8 and block["n_good"] == 12
    out = tmp_path / "d.jsonl"
    code = "from anomedge.cli.run import main; main()"
    subprocess.run([sys.executable, "-c", code, str(art), "--source", str(labelled / "test" / "crack"),
                    "--jsonl", str(out), "--quiet"], check=True, timeout=120)
    records = [json.loads(l) for l in out.read_text().splitlines()]
    assert [r["threshold"] for r in records] == [pytest.approx(block["image"])] * len(records)


def test_one_class_validation_falls_back_and_says_so(art, labelled, tmp_path, env):
    only_good = tmp_path / "onlygood"
    shutil.copytree(labelled, only_good)
    shutil.rmtree(only_good / "test" / "crack")
    result = cli("calibrate", art, "--val", only_good, "--method", "f1", env=env)
    assert result.returncode == 0, result.stderr
    assert "note:" in result.stderr and meta(art)["thresholds"]["note"]


@pytest.mark.parametrize("case", ["empty", "nothing", "all_corrupt"])
def test_failures_leave_metadata_byte_identical(case, art, tmp_path, env):
    before = (art / "metadata.json").read_bytes()
    folder = tmp_path / "in"
    folder.mkdir()
    if case == "all_corrupt":
        (folder / "a.png").write_bytes(b"\x89PNG broken")
    args = [] if case == "nothing" else ["--good", folder]
    result = cli("calibrate", art, *args, env=env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert (art / "metadata.json").read_bytes() == before


def test_corrupt_image_among_good_is_named_and_skipped(art, labelled, tmp_path, env):
    folder = tmp_path / "good"
    shutil.copytree(labelled / "test" / "good", folder)
    (folder / "zz_broken.png").write_bytes(b"\x89PNG broken")
    result = cli("calibrate", art, "--good", folder, env=env)
    assert result.returncode == 0, result.stderr
    assert "zz_broken.png" in result.stderr
    assert meta(art)["thresholds"]["n_good"] == 12


def test_runs_are_recorded_and_listed(art, labelled, env):
    cli("calibrate", art, "--good", labelled / "test" / "good", env=env)
    cli("calibrate", art, "--good", labelled / "test" / "good", "--method", "frr", "--target", "0.1", env=env)
    listing = cli("runs", "list", env=env)
    assert listing.returncode == 0 and listing.stdout.count("calibrate") == 2
    compare = cli("runs", "compare", "1", "2", env=env)
    assert "params.method" in compare.stdout and "frr" in compare.stdout
    missing = cli("runs", "show", "99", env=env)
    assert missing.returncode == 2 and "error:" in missing.stderr


def test_mask_of_another_shape_is_named(tmp_path):
    import cv2

    from anomedge.calibrate.apply import read_masks
    from anomedge.errors import InputError

    good, wide = tmp_path / "good_mask.png", tmp_path / "wide_mask.png"
    cv2.imwrite(str(good), np.full((300, 300), 255, np.uint8))
    cv2.imwrite(str(wide), np.full((100, 300), 255, np.uint8))
    masks = read_masks([good, None], (64, 64))
    assert masks.shape == (2, 64, 64) and masks[0].all() and not masks[1].any()
    with pytest.raises(InputError, match="wide_mask.png: mask is 300×100"):
        read_masks([wide], (64, 64))


def test_labels_must_match_images(art, labelled):
    from anomedge.calibrate.apply import calibrate
    from anomedge.errors import InputError

    before = (art / "metadata.json").read_bytes()
    paths = sorted((labelled / "test" / "good").iterdir())
    with pytest.raises(InputError, match="3 labels for 12 images"):
        calibrate(art, [], "f1", (paths, np.zeros(3, np.int8), None))
    assert (art / "metadata.json").read_bytes() == before


def test_unusable_good_images_are_skipped_by_name_and_too_many_stop_with_one_line(art, labelled, env, tmp_path):
    from test_imageio import png_bomb

    good = tmp_path / "good"
    shutil.copytree(labelled / "test" / "good", good)
    (good / "zz_bomb.png").write_bytes(png_bomb(3000, 2000))
    (good / "zz_cut.png").write_bytes((labelled / "train" / "good").glob("*.png").__next__().read_bytes()[:400])
    result = cli("calibrate", art, "--good", good, "--max-pixels", "5000000", env=env)
    assert result.returncode == 0, result.stderr
    warnings = [l for l in result.stderr.splitlines() if l.startswith("warning: skipped")]
    assert len(warnings) == 2 and "zz_bomb.png: 3000×2000" in warnings[0] and "zz_cut.png: not a readable image" in warnings[1]
    assert meta(art)["thresholds"]["n_good"] == 12 and np.isfinite(meta(art)["thresholds"]["image"])
    before = (art / "metadata.json").read_bytes()
    for i in range(13):  # now most images are unusable (the bomb is within the default budget)
        (good / f"zz_text_{i:02d}.png").write_text("not an image")
    result = cli("calibrate", art, "--good", good, env=env)
    errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1 and "14 of 27 images could not be used" in errors[0]
    assert "Traceback" not in result.stderr and (art / "metadata.json").read_bytes() == before
