"""Training augmentations: parsing, the views themselves, and that PaDiM / PatchCore / SimpleNet really fit
on the transformed copies (same statistics as a fit on flipped image files) and record it in metadata."""

import cv2
import numpy as np
import pytest
import torch

from anomedge.errors import InputError
from anomedge.models.augment import VIEWS, parse_augment, with_views
from anomedge.models.padim import Padim, PadimConfig
from anomedge.models.patchcore import PatchCore, PatchCoreConfig
from anomedge.models.simplenet import SimpleNet, SimpleNetConfig

SMALL = {"image_size": 64}


@pytest.mark.parametrize("text, views", [
    ("none", ()), ("", ()), ("hflip", ("hflip",)), ("hflip,vflip,rot180", ("hflip", "vflip", "rot180")),
    (" rot180 , hflip ", ("rot180", "hflip")),
])
def test_parse_augment(text, views):
    assert parse_augment(text) == views


@pytest.mark.parametrize("text, match", [("spin", "unknown view"), ("hflip,hflip", "named twice"),
                                         (3, "expected 'none'"), ("none,hflip", "unknown view")])
def test_parse_augment_refuses(text, match):
    with pytest.raises(InputError, match=match):
        parse_augment(text)


def test_views_are_flips_and_the_half_turn():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    np.testing.assert_array_equal(VIEWS["hflip"](x).numpy(), x.numpy()[..., ::-1])
    np.testing.assert_array_equal(VIEWS["vflip"](x).numpy(), x.numpy()[..., ::-1, :])
    np.testing.assert_array_equal(VIEWS["rot180"](x).numpy(), np.rot90(x.numpy(), 2, axes=(2, 3)))
    out = list(with_views([x, x + 1], ("hflip", "rot180")))
    assert len(out) == 6 and torch.equal(out[3], x + 1) and torch.equal(out[4], VIEWS["hflip"](x + 1))


@pytest.fixture(scope="module")
def cells_and_flipped(tmp_path_factory, elpv_paths):
    """4 ELPV cells, and the same 4 cells plus their horizontally flipped copies as image files."""
    folder = tmp_path_factory.mktemp("flipped")
    cells = list(elpv_paths[:4])
    flipped = []
    for i, p in enumerate(cells):
        dst = folder / f"{i}_h.png"
        cv2.imwrite(str(dst), cv2.imread(str(p), cv2.IMREAD_UNCHANGED)[:, ::-1])
        flipped.append(dst)
    return cells, cells + flipped


def test_padim_augment_equals_a_fit_on_flipped_files(cells_and_flipped):
    cells, with_files = cells_and_flipped
    det = Padim(PadimConfig(**SMALL, augment="hflip", n_channels=32), progress=False)  # one backbone, three fits
    det.fit(cells)
    aug_mean, aug_factor, fit = det.mean, det.factor, det.metadata_blocks()["model"]["fit"]
    det.views = ()
    files = det.fit(with_files).mean, det.factor
    plain = det.fit(cells).mean
    # flip-then-resize vs resize-then-flip of the same pixels: float32 rounding only
    np.testing.assert_allclose(aug_mean, files[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(aug_factor, files[1], rtol=1e-3, atol=1e-3)
    assert np.abs(aug_mean - plain).max() > 100 * np.abs(aug_mean - files[0]).max()
    assert fit["augment"] == "hflip" and fit["n_train"] == 8 and fit["n_images"] == 4
    assert PadimConfig().augment == "none" and PatchCoreConfig().augment == "none"


def test_patchcore_augment_multiplies_the_patches_and_is_recorded(cells_and_flipped):
    cells, _ = cells_and_flipped
    det = PatchCore(PatchCoreConfig(**SMALL, coreset_fraction=0.5, augment="hflip,vflip,rot180"), progress=False)
    det.fit(cells[:2])
    aug_patches, aug_bank = det.n_train_patches, len(det.bank)
    assert det.metadata_blocks()["model"]["fit"]["augment"] == "hflip,vflip,rot180"
    det.views = ()
    det.fit(cells[:2])
    assert aug_patches == 4 * det.n_train_patches and aug_bank == 4 * len(det.bank)


def test_simplenet_augment_adds_the_flipped_features(cells_and_flipped):
    cells, with_files = cells_and_flipped
    det = SimpleNet(SimpleNetConfig(**SMALL, augment="hflip", epochs=1, batch_size=64, hidden=8), progress=False)
    aug = det.patches(cells)
    ref = SimpleNet(SimpleNetConfig(**SMALL), progress=False).patches(with_files)
    assert aug.shape == ref.shape == (8 * 8 * 8, det.channels)
    # rows: [images 0-3, their flips]; the files list is [cells, flipped cells] — the same order
    torch.testing.assert_close(aug, ref, rtol=1e-4, atol=1e-4)
    det.fit_patches(aug, len(cells))
    fit = det.metadata_blocks()["model"]["fit"]
    assert fit["augment_views"] == ["hflip"] and fit["n_patches"] == 512 and fit["n_images"] == 4


def test_unknown_view_is_an_input_error_for_every_detector():
    for cls, cfg in ((Padim, PadimConfig), (PatchCore, PatchCoreConfig), (SimpleNet, SimpleNetConfig)):
        with pytest.raises(InputError, match="unknown view"):
            cls(cfg(**SMALL, augment="transpose"), progress=False)
