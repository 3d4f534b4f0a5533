"""The edge import closure: ad-run and every runtime module need none of the workstation's libraries.

Each check runs in a fresh interpreter whose import system refuses the modules of the optional extras
(``REFUSED``), so a lazy ``import onnx`` on the run path fails here exactly as it fails on a base install
(``pip install anomedge``: numpy, opencv-python-headless, onnxruntime, click). ``.ci/edge.py`` runs the
same artifacts in real base and floor venvs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

REFUSED = ("torch", "torchvision", "timm", "onnx", "onnxscript", "sklearn", "skimage", "scipy", "faiss",
           "safetensors", "matplotlib", "tqdm", "elpv_dataset", "openvino", "tensorrt", "cuda", "paho")

# Modules outside anomedge.runtime that ad-run imports (the runtime's folder source lists images with it).
EDGE_MODULES = ("anomedge", "anomedge.errors", "anomedge.artifact", "anomedge.datasets.folder",
                "anomedge.cli.common", "anomedge.cli.run")

REFUSE = f"""
import importlib.abc, json, sys
REFUSED = {REFUSED!r}

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in REFUSED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (not in the base install)", name=name)
        return None

sys.meta_path.insert(0, Refuse())

def loaded_refused():
    return sorted({{m.partition(".")[0] for m in sys.modules}} & set(REFUSED))
"""

# Packages that are edge code as a whole (each walked, every module imported), where they exist ...
EDGE_PACKAGES = ("anomedge.runtime", "anomedge.scoring")
# ... except their export-time modules, which no edge module may import (the ONNX builder imports onnx).
EXPORT_ONLY = ("anomedge.scoring.graph",)

IMPORT_ALL = REFUSE + f"""
import importlib, importlib.util, pkgutil
names = set({EDGE_MODULES!r})
for package in {EDGE_PACKAGES!r}:
    if importlib.util.find_spec(package) is not None:
        path = importlib.import_module(package).__path__
        names |= {{package}} | {{m.name for m in pkgutil.walk_packages(path, package + ".")}}
names = sorted(names - set({EXPORT_ONLY!r}))
failed = {{}}
for name in names:
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed[name] = f"{{type(exc).__name__}}: {{exc}}"
print(json.dumps({{"modules": names, "failed": failed, "refused_loaded": loaded_refused(),
                  "export_only_loaded": sorted(set({EXPORT_ONLY!r}) & set(sys.modules))}}))
"""


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_the_refusal_works():
    """The check can fail: importing a refused module in the same interpreter raises."""
    proc = run_python(REFUSE + "import onnx")
    assert proc.returncode != 0 and "No module named 'onnx' (not in the base install)" in proc.stderr


def test_every_runtime_module_imports_without_the_extras():
    proc = run_python(IMPORT_ALL)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(result["modules"]) >= 20, result["modules"]  # the walk found the runtime
    assert {"anomedge.runtime.preprocess", "anomedge.runtime.backends.onnxruntime"} <= set(result["modules"])
    assert result["failed"] == {}
    assert result["refused_loaded"] == []
    assert result["export_only_loaded"] == []


@pytest.mark.slow
@pytest.mark.parametrize("kernel", ["numpy", "onnxruntime"])
def test_ad_run_inspects_a_folder_without_the_extras(tiny_artifact, elpv_paths, tmp_path, kernel):
    """A real ad-run on a real artifact and folder, with each host kNN kernel, in an interpreter without the extras."""
    images = tmp_path / "images"
    images.mkdir()
    for path in elpv_paths[32:36]:
        (images / path.name).write_bytes(path.read_bytes())
    jsonl = tmp_path / "decisions.jsonl"
    args = [str(tiny_artifact.root), "--source", str(images), "--jsonl", str(jsonl), "--quiet", "--knn-kernel", kernel]
    code = REFUSE + f"""
from anomedge.cli.run import main
try:
    main({args!r}, standalone_mode=False)
finally:
    print(json.dumps({{"refused_loaded": loaded_refused(),
                       "anomedge": sorted(m for m in sys.modules if m.startswith("anomedge"))}}))
"""
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["refused_loaded"] == []
    assert not [m for m in result["anomedge"] if m.startswith(("anomedge.export", "anomedge.models", *EXPORT_ONLY))]
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(records) == 4
    assert {r["label"] for r in records} <= {"OK", "NG"} and all(r["score"] > 0 for r in records)


@pytest.mark.parametrize("preset, level", [(None, 2), ("INFO", 4)])
def test_opencv_log_quieted_to_errors_unless_the_user_set_a_level(preset, level):
    """OpenCV's own log goes to ERROR (2) at import, through whichever API this OpenCV has (4.x: cv2.setLogLevel,
    5: cv2.utils.logging); a user's OPENCV_LOG_LEVEL is kept. The floors venv of .ci/edge.py runs OpenCV 4.5."""
    code = """
import cv2
import anomedge.runtime.preprocess  # imports imageio, which sets the level
api = getattr(getattr(cv2, "utils", None), "logging", None)
print((getattr(api, "getLogLevel", None) or cv2.getLogLevel)())
"""
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_LOG_LEVEL"}
    if preset:
        env["OPENCV_LOG_LEVEL"] = preset
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout.split()[-1]) == level
