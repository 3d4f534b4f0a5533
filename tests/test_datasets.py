"""anomedge.datasets: ELPV protocol, folder/glob/txt listing, MVTec reader, generated digits/synthetic sets,
the load_dataset registry. Real files on disk, tiny sizes."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest

from anomedge.datasets import DATASETS, load_dataset
from anomedge.datasets.cache import MARKER
from anomedge.datasets.folder import IMAGE_SUFFIXES, list_images, load_mvtec
from anomedge.datasets.split import Split
from anomedge.errors import InputError

needs_elpv = pytest.mark.skipif(importlib.util.find_spec("elpv_dataset") is None,
                                reason="elpv-dataset is not installed (pip install elpv-dataset)")


def tree_hash(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def gray(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None and image.dtype == np.uint8 and image.ndim == 2, path
    return image


def put(path: Path, value: int = 0, size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((size, size), value, np.uint8))
    return path


# ---- Split ------------------------------------------------------------------------------------------------

def test_split_checks_lengths_and_summarises():
    split = Split("x", (Path("a.png"),), (Path("b.png"), Path("c.png")), np.array([0, 1]))
    assert split.test_labels.dtype == np.int8
    assert split.summary() == "x: 1 train (good), 2 test (1 good, 1 anomalous)"
    with pytest.raises(InputError, match="test_labels"):
        Split("x", (), (Path("b.png"),), np.array([0, 1]))
    with pytest.raises(InputError, match="test_labels"):
        Split("x", (), (Path("b.png"),), np.array([2]))
    with pytest.raises(InputError, match="test_masks"):
        Split("x", (), (Path("b.png"),), np.array([1]), test_masks=(None, None))


def test_split_subset_keeps_both_classes_in_order():
    test = tuple(Path(f"t{i}.png") for i in range(7))
    split = Split("x", tuple(Path(f"a{i}.png") for i in range(5)), test, np.array([0, 0, 0, 1, 1, 1, 1]),
                  defect_types=("good",) * 3 + ("crack",) * 4)
    small = split.subset(4)
    assert small.train == split.train[:4]
    assert small.test == (test[0], test[1], test[3], test[4]) and small.test_labels.tolist() == [0, 0, 1, 1]
    assert small.defect_types == ("good", "good", "crack", "crack") and small.test_masks is None


# ---- ELPV -------------------------------------------------------------------------------------------------

def csv_probabilities() -> dict[Path, tuple[float, str]]:
    root = Path(importlib.util.find_spec("elpv_dataset").origin).parent / "data"
    table = np.genfromtxt(root / "labels.csv", dtype=None, encoding="utf-8")
    return {(root / str(row[0])).resolve(): (float(row[1]), str(row[2])) for row in table}


@needs_elpv
@pytest.mark.parametrize("cell_type, n_train, n_good, n_bad", [("mono", 353, 235, 369), ("poly", 552, 368, 452)])
def test_elpv_protocol_counts_labels_and_disjointness(cell_type, n_train, n_good, n_bad):
    from anomedge.datasets.elpv import load_elpv

    split = load_elpv(cell_type)
    table = csv_probabilities()
    counts = (len(split.train), int((split.test_labels == 0).sum()), int(split.test_labels.sum()))
    assert counts == (n_train, n_good, n_bad)
    train, test = {p.resolve() for p in split.train}, {p.resolve() for p in split.test}
    assert len(train) == n_train and len(test) == n_good + n_bad and not train & test
    assert all(p.is_file() for p in split.train + split.test)
    for path in train:
        assert table[path] == (0.0, cell_type)
    for path, label in zip(split.test, split.test_labels):
        prob, kind = table[path.resolve()]
        assert kind == cell_type and prob != pytest.approx(1 / 3, abs=1e-3)
        assert label == (1 if prob > 0.5 else 0) and (prob == 0.0 or prob > 0.5)
    # every defect-free and every >0.5 cell of that type is used exactly once
    expected = {p for p, (prob, kind) in table.items() if kind == cell_type and (prob == 0 or prob > 0.5)}
    assert train | test == expected
    assert round(0.6 * (n_train + n_good)) == n_train


@needs_elpv
def test_elpv_seed_changes_only_the_good_partition():
    from anomedge.datasets.elpv import load_elpv

    a, b, c = load_elpv("mono", seed=0), load_elpv("mono", seed=0), load_elpv("mono", seed=1)
    assert a.train == b.train and a.test == b.test and np.array_equal(a.test_labels, b.test_labels)
    assert a.train != c.train and len(a.train) == len(c.train)
    bad = lambda s: {p for p, y in zip(s.test, s.test_labels) if y}  # noqa: E731
    assert bad(a) == bad(c)
    with pytest.raises(InputError, match="mono, poly"):
        load_elpv("multi")


def test_elpv_missing_package_says_what_to_install(monkeypatch):
    from anomedge.datasets import elpv

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "elpv_dataset" else real(name, *a))
    with pytest.raises(InputError, match="pip install elpv-dataset"):
        elpv.load_elpv("mono")


# ---- folders ----------------------------------------------------------------------------------------------

def test_list_images_folder_glob_and_txt(tmp_path):
    images = [put(tmp_path / name) for name in ("b.png", "a.JPG", "c.Tiff")]
    (tmp_path / "notes.txt").write_text("x")
    put(tmp_path / "sub" / "d.png")
    assert list_images(tmp_path) == sorted(images)
    assert list_images(str(tmp_path / "*.png")) == [tmp_path / "b.png"]
    assert list_images(str(tmp_path / "**" / "*.png")) == [tmp_path / "b.png", tmp_path / "sub" / "d.png"]
    listing = tmp_path / "sub" / "list.txt"
    listing.write_text("# parts\nd.png\n\n../a.JPG\n")
    assert list_images(listing) == [tmp_path / "sub" / "d.png", tmp_path / "sub" / ".." / "a.JPG"]
    assert list_images(tmp_path / "b.png") == [tmp_path / "b.png"]


def test_list_images_errors_name_the_path(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("no images")
    with pytest.raises(InputError, match="no images found") as info:
        list_images(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(info.value) and all(s in str(info.value) for s in IMAGE_SUFFIXES)
    with pytest.raises(InputError, match="no images found"):
        list_images(str(tmp_path / "*.png"))
    with pytest.raises(InputError, match="no such"):
        list_images(tmp_path / "missing")


def make_mvtec(root: Path) -> None:
    for i in range(3):
        put(root / "train" / "good" / f"{i:03d}.png")
    put(root / "test" / "good" / "000.png")
    put(root / "test" / "crack" / "000.png", 200)
    put(root / "test" / "crack" / "001.png", 200)
    put(root / "ground_truth" / "crack" / "000_mask.png", 255)


def test_load_mvtec_labels_masks_and_types(tmp_path):
    make_mvtec(tmp_path / "part")
    split = load_mvtec(tmp_path / "part")
    root = tmp_path / "part"
    assert split.train == tuple(root / "train" / "good" / f"{i:03d}.png" for i in range(3))
    assert split.test == (root / "test/crack/000.png", root / "test/crack/001.png", root / "test/good/000.png")
    assert split.test_labels.tolist() == [1, 1, 0] and split.test_labels.dtype == np.int8
    assert split.test_masks == (root / "ground_truth/crack/000_mask.png", None, None)
    assert split.defect_types == ("crack", "crack", "good")
    with pytest.raises(InputError, match="train/good"):
        load_mvtec(tmp_path / "part" / "test")


def test_load_dataset_folders_and_unknown_specs(tmp_path):
    make_mvtec(tmp_path / "part")
    assert load_dataset(tmp_path / "part").test_labels.tolist() == [1, 1, 0]
    plain = load_dataset(str(tmp_path / "part" / "train" / "good"))
    assert len(plain.train) == 3 and plain.test == () and plain.test_labels.shape == (0,)
    with pytest.raises(InputError, match="elpv:mono.*digits.*synthetic.*MVTec"):
        load_dataset("mnist:3")
    with pytest.raises(InputError, match="digits:<0-9>"):
        load_dataset("digits:x", cache_dir=tmp_path)
    assert set(DATASETS) == {"elpv", "digits", "synthetic"}
    # a folder named like a data set is a folder
    make_mvtec(tmp_path / "digits")
    assert load_dataset(str(tmp_path / "digits")).name == "digits"


# ---- digits -----------------------------------------------------------------------------------------------

def test_digits_layout_pixels_determinism_and_reuse(tmp_path):
    from sklearn.datasets import load_digits

    from anomedge.datasets.digits import make_digits, render_digit

    digits = load_digits()
    split = make_digits(tmp_path / "a", anomaly_digit=3, size=16)
    n_good = int((digits.target != 3).sum())
    assert len(split.train) == round(0.8 * n_good) and len(split.train) + int((split.test_labels == 0).sum()) == n_good
    assert int(split.test_labels.sum()) == int((digits.target == 3).sum()) and split.name == "digits:3"
    for path, label in zip(split.test, split.test_labels):
        assert (digits.target[int(path.stem)] == 3) == bool(label)
        assert path.parent.name == ("anomaly" if label else "good")
    assert all(digits.target[int(p.stem)] != 3 for p in split.train)
    assert not {p.stem for p in split.train} & {p.stem for p in split.test}
    sample = split.train[5]
    image = gray(sample)
    assert image.shape == (16, 16)
    np.testing.assert_array_equal(image, render_digit(digits.images[int(sample.stem)], 16))
    assert image.max() >= 200 and image.min() == 0

    first = tree_hash(tmp_path / "a")
    again = make_digits(tmp_path / "b", anomaly_digit=3, size=16)
    assert tree_hash(tmp_path / "b") == first
    assert again.train == tuple(tmp_path / "b" / p.relative_to(tmp_path / "a") for p in split.train)
    mtime = sample.stat().st_mtime_ns
    make_digits(tmp_path / "a", anomaly_digit=3, size=16)
    assert sample.stat().st_mtime_ns == mtime and tree_hash(tmp_path / "a") == first
    with pytest.raises(InputError, match="other|not"):
        make_digits(tmp_path / "a", anomaly_digit=3, size=16, seed=1)
    with pytest.raises(InputError, match="0..9"):
        make_digits(tmp_path / "c", anomaly_digit=10)


def test_load_dataset_digits_uses_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("ANOMEDGE_CACHE", str(tmp_path / "env"))
    split = load_dataset("digits:1")
    assert split.name == "digits:1" and (tmp_path / "env" / "digits-1-s32-seed0" / MARKER).is_file()
    assert gray(split.train[0]).shape == (32, 32)
    other = load_dataset("digits", cache_dir=tmp_path / "explicit")
    assert other.name == "digits:7" and other.train[0].is_relative_to(tmp_path / "explicit")


# ---- synthetic --------------------------------------------------------------------------------------------

def small_synthetic(out: Path, texture: str = "brick", seed: int = 0):
    from anomedge.datasets.synthetic import make_synthetic

    return make_synthetic(out, texture, n_train=3, n_test_good=2, n_test_defect=4, size=64, seed=seed)


def available() -> tuple[str, ...]:
    from anomedge.datasets.synthetic import available_textures

    return available_textures()


@pytest.mark.parametrize("texture", ["brick", "grass", "gravel", "elpv"])
def test_synthetic_layout_and_mask_alignment(tmp_path, texture):
    from anomedge.datasets.synthetic import DEFECTS, SyntheticTexture

    if texture not in available():
        pytest.skip(f"texture {texture} not available offline here")
    split = small_synthetic(tmp_path / "s", texture)
    root = tmp_path / "s"
    assert split.name == f"synthetic:{texture}" and len(split.train) == 3
    assert split.defect_types == ("crack", "good", "good", "missing_piece", "scratch", "spot")  # sorted folders
    assert split.test_labels.tolist() == [1, 0, 0, 1, 1, 1]
    assert sorted(t for t in split.defect_types if t != "good") == sorted(DEFECTS)
    tex = SyntheticTexture(texture, 64, 0)
    good = [p for p, y in zip(split.test, split.test_labels) if not y]
    for path in split.train + tuple(good):
        np.testing.assert_array_equal(gray(path), tex.clean(int(path.stem)))
    for path, mask_path, defect, label in zip(split.test, split.test_masks, split.defect_types, split.test_labels):
        if not label:
            assert mask_path is None
            continue
        assert mask_path == root / "ground_truth" / defect / f"{path.stem}_mask.png"
        image, mask, clean = gray(path), gray(mask_path), tex.clean(int(path.stem))
        assert set(np.unique(mask)) == {0, 255} and image.shape == mask.shape == (64, 64)
        inside = mask == 255
        assert 0 < inside.mean() < 0.25
        np.testing.assert_array_equal(image[~inside], clean[~inside])
        assert (image[inside] != clean[inside]).all()
        assert np.abs(image[inside].astype(int) - clean[inside]).mean() >= 10


def test_synthetic_is_deterministic_and_reused(tmp_path):
    small_synthetic(tmp_path / "a")
    first = tree_hash(tmp_path / "a")
    small_synthetic(tmp_path / "b")
    assert tree_hash(tmp_path / "b") == first
    small_synthetic(tmp_path / "c", seed=1)
    assert tree_hash(tmp_path / "c") != first
    image = tmp_path / "a" / "train" / "good" / "000.png"
    mtime = image.stat().st_mtime_ns
    small_synthetic(tmp_path / "a")
    assert image.stat().st_mtime_ns == mtime
    # a generated folder with a file missing is completed, with the same bytes
    image.unlink()
    small_synthetic(tmp_path / "a")
    assert tree_hash(tmp_path / "a") == first
    assert not list(tmp_path.glob(".*tmp*"))


def test_synthetic_refuses_foreign_folders_and_unknown_textures(tmp_path, monkeypatch):
    from anomedge.datasets import synthetic

    put(tmp_path / "mine" / "photo.png")
    with pytest.raises(InputError, match="not a generated data set"):
        small_synthetic(tmp_path / "mine")
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["photo.png"]
    small_synthetic(tmp_path / "gen")
    with pytest.raises(InputError, match="generated with"):
        small_synthetic(tmp_path / "gen", seed=2)
    with pytest.raises(InputError, match="brick, grass, gravel"):
        small_synthetic(tmp_path / "x", texture="marble")
    assert not (tmp_path / "x").exists()
    real = synthetic._skimage_file
    monkeypatch.setattr(synthetic, "_skimage_file", lambda name: None if name == "grass" else real(name))
    assert "grass" not in synthetic.available_textures()
    with pytest.raises(InputError, match="expected one of brick, gravel") as info:
        small_synthetic(tmp_path / "y", texture="grass")
    assert "grass," not in str(info.value)


def test_load_dataset_synthetic_spec(tmp_path):
    split = load_dataset("synthetic:gravel", cache_dir=tmp_path)
    assert split.summary() == "synthetic:gravel: 40 train (good), 60 test (20 good, 40 anomalous), 40 masks"
    assert gray(split.test[0]).shape == (256, 256)


def test_defect_shift_that_would_saturate_goes_the_other_way():
    from anomedge.datasets.synthetic import _apply

    clean = np.array([[255, 0, 100, 7]], np.uint8)
    mask = np.array([[True, True, True, False]])
    out = _apply(clean, mask, np.array([[50.0, -50.0, 0.2, 50.0]]))
    assert out.tolist() == [[205, 50, 101, 7]]
