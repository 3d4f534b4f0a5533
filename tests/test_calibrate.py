"""calibrate() on a real artifact: pixel threshold from ground-truth masks, masks of another size,
history kept and capped, the normaliser, and every backend picking up a new threshold with no
re-export. The artifact is always a copy (calibration writes metadata.json)."""

import json
import shutil
import warnings

import cv2
import numpy as np
import pytest

from anomedge.artifact import Artifact, write_metadata
from anomedge.calibrate.apply import HISTORY_LIMIT, calibrate, read_masks, score_paths
from anomedge.calibrate.metrics import f1_max
from anomedge.calibrate.normalize import Normalizer
from anomedge.cli.calibrate import validation_set
from anomedge.errors import InputError
from anomedge.runtime.pipeline import Inspector

pytestmark = pytest.mark.filterwarnings("ignore:.*good (images|scores).*:UserWarning")


@pytest.fixture()
def art(tiny_artifact, tmp_path):
    copy = tmp_path / "art"
    shutil.copytree(tiny_artifact.root, copy)
    return copy


def mvtec(root, paths, mask_size=None):
    """MVTec-layout folder of real ELPV cells: 4 good, 4 'crack' with a square ground-truth mask."""
    for sub in ("train/good", "test/good", "test/crack", "ground_truth/crack"):
        (root / sub).mkdir(parents=True)
    shutil.copy(paths[0], root / "train/good" / paths[0].name)
    for p in paths[:4]:
        shutil.copy(p, root / "test/good" / p.name)
    for i, p in enumerate(paths[4:8]):
        shutil.copy(p, root / "test/crack" / p.name)
        size = mask_size or cv2.imread(str(p), cv2.IMREAD_GRAYSCALE).shape
        mask = np.zeros(size, np.uint8)
        mask[size[0] // 4: size[0] // 2, size[1] // 4 + 10 * i: size[1] // 2 + 10 * i] = 255
        cv2.imwrite(str(root / "ground_truth/crack" / f"{p.stem}_mask.png"), mask)
    return root


def test_pixel_threshold_is_f1_max_over_validation_pixels(art, tmp_path, elpv_paths):
    val = validation_set(str(mvtec(tmp_path / "val", elpv_paths[20:28])))
    block = calibrate(art, elpv_paths[28:34], "f1", val)
    assert block["n_good"] == 4 and block["n_defect"] == 4 and block["method"] == "f1"
    with Inspector(Artifact.load(art), "onnxruntime") as insp:
        scored = score_paths(insp, val[0])
    masks = read_masks(val[2], scored.maps.shape[1:], scored.sizes)
    bad = np.asarray(val[1]) == 1
    assert all(m.any() for m in masks[bad]) and not masks[~bad].any()
    expected = f1_max(masks.ravel().astype(np.int8), scored.maps.ravel())[1]
    np.testing.assert_allclose(block["pixel"], expected, rtol=1e-6)
    np.testing.assert_allclose(block["image"], f1_max(val[1], scored.scores)[1], rtol=1e-6)


def test_mask_of_another_size_is_named_and_metadata_untouched(art, tmp_path, elpv_paths):
    val = validation_set(str(mvtec(tmp_path / "val", elpv_paths[20:28], mask_size=(150, 150))))
    before = (art / "metadata.json").read_bytes()
    with pytest.raises(InputError, match=r"_mask.png: mask is 150×150, its image is 300×300"):
        calibrate(art, elpv_paths[28:34], "f1", val)
    assert (art / "metadata.json").read_bytes() == before


def test_f1_without_validation_set_changes_nothing(art, elpv_paths):
    before = (art / "metadata.json").read_bytes()
    with pytest.raises(InputError):
        calibrate(art, elpv_paths[28:32], "f1")
    assert (art / "metadata.json").read_bytes() == before


def test_history_keeps_previous_blocks_and_is_capped(art, elpv_paths):
    meta = json.loads((art / "metadata.json").read_text())
    meta["thresholds"] = {"image": 1.0, "method": "quantile",
                          "history": [{"image": float(i), "method": "quantile"} for i in range(2, 2 + HISTORY_LIMIT)]}
    write_metadata(art, meta)
    block = calibrate(art, elpv_paths[28:34], "frr", target=0.2)
    history = json.loads((art / "metadata.json").read_text())["thresholds"]["history"]
    assert history == block["history"] and len(history) == HISTORY_LIMIT
    assert history[0] == {"image": 1.0, "method": "quantile"}  # the block just replaced comes first
    assert [h["image"] for h in history[1:]] == [float(i) for i in range(2, 1 + HISTORY_LIMIT)]  # oldest dropped
    assert block["params"]["target"] == 0.2


def test_normaliser_puts_the_threshold_at_one_half(art, elpv_paths):
    block = calibrate(art, elpv_paths[28:36], "quantile", q=0.75)
    norm = Normalizer.from_dict(block["normalization"])
    assert norm.apply(block["image"]) == pytest.approx(0.5, abs=1e-12)
    assert norm.min <= block["image"] <= norm.max


def backends():
    found = ["onnxruntime", "torch"]
    try:
        import openvino  # noqa: F401

        found.append("openvino")
    except ImportError:
        pass
    return found


@pytest.mark.parametrize("backend", backends())
def test_every_backend_uses_the_new_threshold_without_reexport(art, backend, elpv_paths):
    hashed = {name: (art / name).read_bytes() for name in Artifact.load(art).metadata.files}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        block = calibrate(art, elpv_paths[28:34], "quantile", q=0.5)
    assert {name: (art / name).read_bytes() for name in hashed} == hashed  # nothing hashed was touched
    with Inspector(Artifact.load(art), backend) as insp:
        assert insp.threshold == pytest.approx(block["image"])
        assert insp.decide(block["image"]) == "OK" and insp.decide(np.nextafter(block["image"], np.inf)) == "NG"
    with Inspector(Artifact.load(art), backend, threshold=123.0) as insp:
        assert insp.threshold == 123.0  # the run-time override still wins
