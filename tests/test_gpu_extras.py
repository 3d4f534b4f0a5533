"""The GPU extras resolve to one CUDA major each, and the Docker files install the same pins.

``pip install --dry-run --report`` resolves ``.[cu12]`` / ``.[cu13]`` against the real index (slow,
skipped offline). TensorRT itself is only on NVIDIA's index (PyPI's ``tensorrt-cu1x-libs`` is a stub
that downloads from it at build time), so its pin is checked from PyPI's metadata of the
``tensorrt-cu1x`` sdist, without building it.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="Python < 3.11 has no tomllib")
from packaging.requirements import Requirement  # noqa: E402
from packaging.version import Version  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def requirement(extra: str, name: str) -> Requirement:
    return next(Requirement(r) for r in EXTRAS[extra] if Requirement(r).name == name)


@pytest.mark.parametrize("major", ["12", "13"])
def test_extras_pin_one_cuda_major(major):
    ort = requirement(f"cu{major}", "onnxruntime-gpu")
    assert ort.extras == {"cuda", "cudnn"} and str(ort.specifier).startswith("==")
    cuda_python = requirement(f"cu{major}", "cuda-python").specifier
    assert Version(f"{major}.9") in cuda_python and Version(f"{int(major) + 1}.0") not in cuda_python
    assert Version(f"{int(major) - 1}.9") not in cuda_python
    trt = requirement(f"tensorrt-cu{major}", f"tensorrt-cu{major}").specifier
    assert Version("10.16.1.11") in trt and Version("11.0.0.114") not in trt  # ORT's provider links libnvinfer.so.10
    assert f"anomedge[cu{major}]" in EXTRAS[f"tensorrt-cu{major}"]


def _online() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=3).close()
        return True
    except OSError:
        return False


def _dry_run(tmp_path: Path, *args: str) -> list[dict]:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    out = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                          "--dry-run", "--quiet", "--report", "-", *args], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return [item["metadata"] for item in json.loads(out.stdout)["install"]]


@pytest.mark.slow
@pytest.mark.skipif(not _online(), reason="pypi.org is not reachable (offline)")
@pytest.mark.parametrize("major", ["12", "13"])
def test_cuda_extra_resolves_to_its_cuda_major(tmp_path, major):
    installed = {m["name"].lower().replace("_", "-"): m["version"] for m in _dry_run(tmp_path, f"{ROOT}[cu{major}]")}
    pin = str(requirement(f"cu{major}", "onnxruntime-gpu").specifier).lstrip("=")
    assert installed["onnxruntime-gpu"] == pin
    assert Version(installed["cuda-python"]).major == int(major)
    nvidia = {name: v for name, v in installed.items() if name.startswith("nvidia-")}
    assert "nvidia-cudnn-cu" + major in nvidia and any(n.startswith("nvidia-cuda-runtime") for n in nvidia)
    other = "13" if major == "12" else "12"
    assert not [n for n in nvidia if n.endswith(f"-cu{other}")], nvidia  # no library of the other CUDA major
    runtime = next(v for n, v in nvidia.items() if n.startswith("nvidia-cuda-runtime"))
    assert Version(runtime).major == int(major)
    # pip also keeps the base install's onnxruntime: the same module folder. docs/gpu.md and
    # gpu_check.sh remove it and reinstall onnxruntime-gpu; this assertion documents why.
    assert "onnxruntime" in installed


@pytest.mark.slow
@pytest.mark.skipif(not _online(), reason="pypi.org is not reachable (offline)")
@pytest.mark.parametrize("major", ["12", "13"])
def test_tensorrt_pin_exists_and_needs_nvidias_index(tmp_path, major):
    name = f"tensorrt-cu{major}"
    spec = requirement(name, name)
    (meta,) = _dry_run(tmp_path, "--no-deps", str(spec))
    assert Version(meta["version"]).major == 10
    libs = [r for r in meta["requires_dist"] if r.startswith(f"tensorrt_cu{major}_libs")]
    assert libs == [f"tensorrt_cu{major}_libs=={meta['version']}"]  # the stub that downloads from pypi.nvidia.com


def test_docker_images_use_the_extras_pins():
    workstation = (ROOT / "docker" / "Dockerfile.workstation").read_text()
    assert '".[tensorrt-cu${CUDA_MAJOR}]"' in workstation and "--extra-index-url https://pypi.nvidia.com" in workstation
    assert re.search(r"ARG CUDA_MAJOR=(12|13)\b", workstation)
    assert "pip uninstall -y onnxruntime onnxruntime-gpu" in workstation
    jetson = (ROOT / "docker" / "Dockerfile.jetson").read_text()
    assert "l4t-tensorrt:r10.3" in jetson  # JetPack 6: TensorRT 10.3, CUDA 12.6
    pinned = Requirement(re.search(r'"(cuda-python[^"]*)"', jetson).group(1)).specifier
    assert Version("12.6.2.post1") in pinned and Version("12.9.0") not in pinned  # L4T's CUDA 12.6
    assert Version("12.6.2.post1") in requirement("cu12", "cuda-python").specifier
