"""The edge matrix (.ci/edge.py): its floors are pyproject's lower bounds, it covers every artifact kind the
workstation exports, and its record check fails on every way a run can go wrong."""

from __future__ import annotations

import importlib.util
import math
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("edge_matrix", ROOT / ".ci" / "edge.py")
edge = sys.modules["edge_matrix"] = importlib.util.module_from_spec(_spec)  # dataclasses look it up
_spec.loader.exec_module(edge)


def version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def lower_bounds() -> dict[str, tuple[int, ...]]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    bounds = {}
    for dep in deps:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9.]+)", dep.replace(" ", ""))
        assert match, f"base dependency {dep!r}: expected NAME>=FLOOR"
        bounds[match[1]] = version(match[2])
    return bounds


def test_pyproject_floors_are_what_ci_installs_on_python_3_10():
    bounds = lower_bounds()
    floors = {name: version(v) for name, v in (pin.split("==") for pin in edge.FLOORS[(3, 10)])}
    assert set(floors) == set(bounds)
    for name, bound in bounds.items():
        assert floors[name][:len(bound)] == bound, f"{name}: pyproject >= {bound}, CI installs {floors[name]}"


def test_the_python_3_11_floors_are_allowed_by_pyproject():
    bounds = lower_bounds()
    for name, v in (pin.split("==") for pin in edge.FLOORS[(3, 11)]):
        assert version(v) >= bounds[name], name


def test_every_detector_and_scoring_placement_has_a_kind():
    from anomedge.models.detector import DETECTORS

    assert {k.export[k.export.index("--detector") + 1] for k in edge.KINDS} == set(DETECTORS)
    runs = {k.run for k in edge.KINDS}
    assert {("--knn-kernel", "numpy"), ("--knn-kernel", "onnxruntime")} <= runs
    assert any("graph" in k.export for k in edge.KINDS)
    assert len({k.name for k in edge.KINDS}) == len(edge.KINDS)


def good(n: int = 3) -> list[dict]:
    return [{"source": f"/in/{i}.png", "label": "OK" if i else "NG", "score": 1.0 + i} for i in range(n)]


def test_record_check_accepts_complete_agreeing_records():
    assert edge.check_records(good(), 3, None) == ""
    assert edge.check_records(good(), 3, good()) == ""


def test_record_check_refuses_lost_error_nan_and_disagreeing_records():
    assert "2 records for 3 images" in edge.check_records(good()[:2], 3, None)
    error = good()
    error[1] = {"source": "/in/1.png", "label": "ERROR", "score": None, "error": "corrupt"}
    assert "label ERROR" in edge.check_records(error, 3, None)
    nan = good()
    nan[2]["score"] = math.nan
    assert "label OK" in edge.check_records(nan, 3, None)
    drift = good()
    drift[1]["score"] *= 1 + 10 * edge.SCORE_RTOL
    assert "rel diff" in edge.check_records(drift, 3, good())
    flipped = good()
    flipped[0]["label"] = "OK"
    assert "vs workstation" in edge.check_records(flipped, 3, good())
