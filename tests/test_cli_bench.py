"""ad-bench on a real artifact: --no-reference, the --atol/--rtol gate and its exit code, the table's units."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

from anomedge.cli.bench import within


def bench(*args):
    code = "from anomedge.cli.bench import main; main()"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory, elpv_paths):
    folder = tmp_path_factory.mktemp("frames")
    for p in elpv_paths[20:24]:
        shutil.copy(p, folder / p.name)
    return folder


def test_within_is_polygraphys_rule():
    ref = np.array([1.0, 10.0])
    assert within(ref, ref + [1e-3, 1e-2], atol=1e-3, rtol=1e-3)
    assert not within(ref, ref + [0.0, 0.0111], atol=1e-3, rtol=1e-3)
    assert not within(ref, ref + [2e-3, 0.0], atol=1e-3, rtol=0.0)


@pytest.mark.slow
def test_gate_passes_within_tolerance_and_fails_with_exit_1(tiny_artifact, frames_dir, tmp_path):
    common = (tiny_artifact.root, "--data", frames_dir, "--runs", 2, "--warmup", 1, "--registry", tmp_path / "r.sqlite")
    ok = bench(*common, "--atol", "1e-3", "--rtol", "1e-3")
    assert ok.returncode == 0, ok.stderr
    assert "parity PASSED" in ok.stdout and "PASS" in ok.stdout.split("parity PASSED")[0] and "100.0 %" in ok.stdout
    assert "p50 ms" in ok.stdout and "model MiB" in ok.stdout and "bench: torch" in ok.stderr
    bad = bench(*common, "--atol", "0", "--rtol", "0", "--backends", "onnxruntime:int8")  # no int8 file: cannot run
    assert bad.returncode == 1 and "parity FAILED" in bad.stderr


@pytest.mark.slow
def test_no_reference_skips_torch_and_refuses_a_gate(tiny_artifact, frames_dir, tmp_path):
    common = (tiny_artifact.root, "--data", frames_dir, "--runs", 2, "--warmup", 1, "--registry", tmp_path / "r.sqlite")
    result = bench(*common, "--no-reference")
    assert result.returncode == 0, result.stderr
    assert "torch" not in result.stdout.split("\n", 2)[1] and "bench: torch" not in result.stderr
    assert "onnxruntime" in result.stdout and "agreement" not in result.stdout
    assert "blocked GFLOP/s" in result.stdout and "sgemm GFLOP/s" in result.stdout  # the kernel next to the machine
    assert "fastest host kernel" in result.stdout and "same-shape sgemm GFLOP/s" in result.stdout
    refused = bench(*common, "--no-reference", "--atol", "1e-3")
    assert refused.returncode == 2 and "drop --no-reference" in refused.stderr


def test_kernel_race_names_the_fastest_host_kernel_and_its_rate(tiny_artifact, elpv_paths):
    """The reported winner is the minimum over the host kernels (faiss is the outside yardstick, never the
    winner) and its GFLOP/s is 2·P·M·D over that kernel's own median time."""
    from anomedge.benchmark import artifact_kernel_race
    from anomedge.runtime.imageio import read_image

    race = artifact_kernel_race(tiny_artifact, read_image(elpv_paths[21]), runs=3)
    host = {k[:-3]: v for k, v in race.items() if k.endswith(" ms") and k != "faiss_flat ms"}
    assert set(host) == {"fused numpy", "fused onnxruntime", "blocked", "pruned"}
    assert race["fastest host kernel"] == min(host, key=host.get)
    dim = tiny_artifact.array("bank.npy").shape[1]
    flops = 2.0 * race["queries"] * race["bank rows"] * dim
    assert race["its GFLOP/s"] == pytest.approx(flops / (min(host.values()) * 1e6), rel=1e-2, abs=0.1)
    assert abs(race["fastest % of sgemm"] - 100 * race["its GFLOP/s"] / race["sgemm GFLOP/s"]) < 1.0
    assert race["same-shape sgemm GFLOP/s"] > 0


def test_knn_head_finds_patchcore_and_an_ensembles_knn_member(tiny_artifact):
    """The race's target: PatchCore's own bank, an ensemble's first kNN member's prefixed files, else None."""
    from types import SimpleNamespace

    from anomedge.runtime.kernel_race import knn_head

    assert knn_head(tiny_artifact) == ("features", "bank.npy", "knn.onnx", 1)
    members = [{"prefix": "m0_", "output": "m0_features", "scoring": {"kind": "mahalanobis"}},
               {"prefix": "m1_", "output": "m1_features", "scoring": {"kind": "knn", "k": 3}}]
    ensemble = SimpleNamespace(metadata=SimpleNamespace(scoring={"kind": "ensemble", "members": members}))
    assert knn_head(ensemble) == ("m1_features", "m1_bank.npy", "m1_knn.onnx", 3)
    padim_only = SimpleNamespace(metadata=SimpleNamespace(scoring={"kind": "ensemble", "members": members[:1]}))
    assert knn_head(padim_only) is None
    assert knn_head(SimpleNamespace(metadata=SimpleNamespace(scoring={"kind": "mahalanobis"}))) is None
