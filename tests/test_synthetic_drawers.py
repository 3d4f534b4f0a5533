"""Defect drawers (datasets.synthetic.DRAWERS, draw_defect): seeded, non-empty masks that are exactly the
changed pixels, the solar-cell drawers included; the written data set still cycles the four DEFECTS."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import data

from anomedge.datasets.synthetic import DEFECTS, DRAWERS, SOLAR_DEFECTS, draw_defect, layout
from anomedge.errors import InputError


@pytest.fixture(scope="module")
def cell() -> np.ndarray:
    return np.ascontiguousarray(data.brick()[:96, :96])


@pytest.mark.parametrize("defect", list(DRAWERS))
def test_drawer_is_seeded_and_its_mask_is_the_changed_pixels(cell, defect):
    a, mask = draw_defect(cell, defect, np.random.default_rng(5))
    b, mask_b = draw_defect(cell, defect, np.random.default_rng(5))
    assert np.array_equal(a, b) and np.array_equal(mask, mask_b)
    assert mask.dtype == bool and mask.shape == cell.shape and mask.any()
    assert np.array_equal(a != cell, mask)  # every mask pixel changed, no other pixel did
    c, _ = draw_defect(cell, defect, np.random.default_rng(6))
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("defect", SOLAR_DEFECTS)
def test_solar_defects_darken(cell, defect):
    image = np.full((96, 96), 200, np.uint8)
    out, mask = draw_defect(image, defect, np.random.default_rng(1))
    assert (out[mask] < 200).all() and (out[~mask] == 200).all()


def test_dark_area_has_a_soft_edge():
    image = np.full((128, 128), 220, np.uint8)
    out, mask = draw_defect(image, "dark_area", np.random.default_rng(3))
    shift = 220 - out[mask].astype(int)
    assert shift.min() < 0.6 * shift.max()  # fades in from the crack, not one flat step


def test_colour_and_strength(cell):
    rgb = np.repeat(cell[..., None], 3, axis=2)
    out, mask = draw_defect(rgb, "spot", np.random.default_rng(2))
    assert np.array_equal((out != rgb).any(axis=2), mask)
    full, m1 = draw_defect(cell, "crack", np.random.default_rng(2))
    faint, m2 = draw_defect(cell, "crack", np.random.default_rng(2), strength=0.2)
    assert np.array_equal(m1, m2)
    assert np.abs(faint.astype(int) - cell)[m2].mean() < 0.5 * np.abs(full.astype(int) - cell)[m1].mean()


@pytest.mark.parametrize("args, match", [(("dent",), "dent"), (("spot", 1.5), "strength")])
def test_bad_defect_arguments(cell, args, match):
    with pytest.raises(InputError, match=match):
        draw_defect(cell, args[0], np.random.default_rng(0), *args[1:])
    with pytest.raises(InputError, match="square"):
        draw_defect(cell[:, :80], "spot", np.random.default_rng(0))


def test_the_written_set_keeps_its_four_defects():
    assert DEFECTS == ("scratch", "spot", "crack", "missing_piece")
    assert [d for _, _, d in layout(1, 0, 6)][1:] == ["scratch", "spot", "crack", "missing_piece", "scratch", "spot"]
