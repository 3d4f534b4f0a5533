"""ad-demo (the README's main job) end to end on a few real ELPV cells: the default detector fitted,
exported, scored through onnxruntime and compared with its PyTorch reference, the tables printed."""

import importlib.util

import pytest
from click.testing import CliRunner

from anomedge.cli.demo import head_summary, main
from anomedge.models.detector import DEFAULT_DETECTOR

needs_elpv = pytest.mark.skipif(importlib.util.find_spec("elpv_dataset") is None,
                                reason="the ELPV data set is not installed: pip install elpv-dataset")


def test_head_summary_names_the_bank_or_the_members():
    knn = {"kind": "knn", "bank_rows": 2493}
    assert head_summary(knn) == "kNN bank 2,493 rows"
    ensemble = {"kind": "ensemble", "members": [{"name": "padim0", "scoring": {"kind": "mahalanobis"}},
                                                {"name": "patchcore1", "scoring": knn}]}
    assert head_summary(ensemble) == "members padim0 (mahalanobis), patchcore1 (kNN bank 2,493 rows)"


@needs_elpv
@pytest.mark.slow  # fits the default detector on 24 real cells and times two backends
def test_demo_runs_the_default_detector_on_elpv(tmp_path):
    result = CliRunner().invoke(main, ["--out", str(tmp_path), "--cells", "mono", "--limit", "24", "--runs", "3"])
    assert result.exit_code == 0, result.output
    assert f"({DEFAULT_DETECTOR})" in result.output and "== Quality and decisions" in result.output
    row = next(line for line in result.output.splitlines() if line.lstrip().startswith("mono "))
    assert " 24 " in row  # the limited test set: 12 good + 12 defective cells
    assert (tmp_path / "elpv-mono" / "metadata.json").is_file()
    assert "fused numpy ms" in result.output  # the kNN race ran on the default's kNN bank


def test_demo_unknown_cell_type_is_one_line_exit_2(tmp_path):
    result = CliRunner().invoke(main, ["--out", str(tmp_path), "--cells", "mono,tri", "--limit", "8"])
    assert result.exit_code == 2 and "cell type 'tri'" in result.output
