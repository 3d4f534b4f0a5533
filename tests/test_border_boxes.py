"""benchmarks/border_boxes.py: box statistics of ad-run records against ground-truth masks."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def border_boxes():
    spec = importlib.util.spec_from_file_location("border_boxes", ROOT / "benchmarks" / "border_boxes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_box_stats_counts_off_defect_border_boxes_and_hits(border_boxes, tmp_path):
    mask = np.zeros((40, 40), np.uint8)
    mask[10:20, 10:20] = 255
    for name in ("a.png", "b.png", "g.png"):
        cv2.imwrite(str(tmp_path / name), np.zeros((40, 40), np.uint8))
    cv2.imwrite(str(tmp_path / "a_mask.png"), mask)
    cv2.imwrite(str(tmp_path / "b_mask.png"), mask)
    masks = {str((tmp_path / n).resolve()): (tmp_path / f"{n[0]}_mask.png" if n != "g.png" else None)
             for n in ("a.png", "b.png", "g.png")}
    labels = {str((tmp_path / n).resolve()): int(n != "g.png") for n in ("a.png", "b.png", "g.png")}
    records = [
        {"source": str(tmp_path / "a.png"), "label": "NG", "boxes": [[12, 12, 3, 3], [0, 0, 4, 4], [25, 25, 5, 5]]},
        {"source": str(tmp_path / "b.png"), "label": "NG", "boxes": [[37, 30, 3, 3]]},   # off, at the right edge
        {"source": str(tmp_path / "g.png"), "label": "NG", "boxes": [[0, 36, 4, 4]]},    # a good image: off, border
        {"source": str(tmp_path / "other.png"), "label": "NG", "boxes": [[0, 0, 1, 1]]},  # not in the test set
    ]
    s = border_boxes.box_stats(records, masks, labels)
    assert (s["boxes"], s["off_defect"], s["off_defect_at_border"]) == (5, 4, 3)
    assert s["off_defect_share"] == pytest.approx(0.8) and s["border_share"] == pytest.approx(0.6)
    assert (s["defective_hit"], s["defective"], s["good_ng"], s["good"]) == (1, 2, 1, 1)
    assert "| 5 | 4 (80%) | 3 (60%) | 1/2 (50%) | 1/1 | 2/2 |" in border_boxes.row("x", s)
