"""ad-export: plain mistakes end in one line, exit 2, before any data is read or "fitting" is printed."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def export(*args, env=None):
    code = "from anomedge.cli.export import main; main()"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=180,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("args, message", [
    (("--detector", "patchcore", "--param", "coreset_fraction=abc"),
     "patchcore: --param coreset_fraction='abc': expected a number (default 0.01)"),
    (("--detector", "patchcore", "--param", "k=1.5"), "patchcore: --param k=1.5: expected a whole number (default 1)"),
    (("--detector", "patchcore", "--param", "coreset_fraction=2"), "coreset fraction 2: expected a value in (0, 1]"),
    (("--param", "refit=maybe"), "ensemble: --param refit='maybe': expected true or false (default true)"),  # the default detector (ensemble)
    (("--detector", "patchcor"), "unknown detector 'patchcor'; choose one of: patchcore"),
    (("--detector", "simplenet", "--placement", "graph"), "simplenet already scores inside its graph"),
    (("--detector", "teacher_student", "--placement", "graph"), "teacher_student already scores inside its graph"),
])
def test_bad_parameters_fail_in_one_line_before_the_data_is_read(tmp_path, args, message):
    # the data argument does not exist: a parameter error must come first
    result = export(tmp_path / "no-such-data", "--out", tmp_path / "art", *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert "fitting" not in result.stderr and "no-such-data" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_vit_without_the_model_hub_names_the_weights_parameter(tmp_path):
    result = export(tmp_path / "no-such-data", "--detector", "vit", "--out", tmp_path / "art",
                    env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: vit: cannot download") and "--param weights=PATH" in last and "weights=none" in last
