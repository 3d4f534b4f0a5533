"""anomedge.export.fit: parameter checks and the default threshold's warnings."""

from __future__ import annotations

import pytest

from anomedge.errors import InputError
from anomedge.export.fit import check_params, holdout_warnings


def test_holdout_warnings_give_the_numbers_and_the_fix():
    (text,) = holdout_warnings(4, 0.99, "art")
    assert "only 4 held-out good images (fewer than 30)" in text and "up to 49 % (95 %)" in text
    assert "0.99 quantile is about their highest score" in text and "ad-calibrate art --good PATH" in text
    assert holdout_warnings(30, 0.99, "art") == []
    (none,) = holdout_warnings(0, 0.99, "art")
    assert "no default threshold" in none


@pytest.mark.parametrize("params, word", [
    ({"coreset_fraction": "abc"}, "a number"), ({"k": True}, "a whole number"), ({"reduction": 3}, "a JSON object"),
    ({"nope": 1}, "unknown parameter"),
])
def test_check_params_refuses_wrong_types_and_names(params, word):
    with pytest.raises(InputError, match=word):
        check_params("patchcore", params)


def test_check_params_accepts_right_types():
    check_params("patchcore", {"coreset_fraction": 1, "k": 3, "reduction": {"name": "max"}, "projection_dim": None})
    check_params("padim", {})
