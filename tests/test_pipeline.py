"""End to end on a real (tiny) PatchCore artifact: runtime vs PyTorch reference, bad inputs, torch-free runtime."""

import json
import subprocess
import sys

import numpy as np
import pytest

from anomedge.artifact import Artifact
from anomedge.benchmark import parity, reference_and_runtime
from anomedge.errors import ArtifactError, InputError
from anomedge.runtime.pipeline import Inspector
from anomedge.runtime.preprocess import read_image


def test_runtime_matches_torch_reference(tiny_artifact, elpv_paths):
    frames = [read_image(p) for p in elpv_paths[20:32]]
    ref_scores, ref_maps, scores, maps, threshold = reference_and_runtime(tiny_artifact, frames)
    p = parity(ref_scores, ref_maps, scores, maps, threshold)
    assert p.max_rel_score_diff < 1e-4, p
    assert p.max_map_diff < 1e-3, p
    assert p.decision_agreement == 1.0
    assert maps.shape == (12, 64, 64)
    assert np.ptp(scores) > 0  # different cells get different scores


def test_wrong_shaped_batch_is_refused(tiny_artifact):
    with Inspector(tiny_artifact, "onnxruntime") as ort:
        with pytest.raises(InputError, match=r"expected \(N, 3, 64, 64\)"):
            ort.backend.infer(np.zeros((1, 3, 32, 32), np.float32))
        with pytest.raises(InputError, match="dtype float64"):
            ort.backend.infer(np.zeros((1, 3, 64, 64)))


def test_tampered_bank_stops_the_run(tiny_artifact, tmp_path):
    import shutil

    copy = tmp_path / "art"
    shutil.copytree(tiny_artifact.root, copy)
    bank = np.load(copy / "bank.npy")
    np.save(copy / "bank.npy", bank * 1.01)
    with pytest.raises(ArtifactError, match="bank.npy: sha256"):
        Artifact.load(copy)


def test_runtime_does_not_import_torch(tiny_artifact, elpv_paths):
    code = f"""
import sys, json
from anomedge.artifact import Artifact
from anomedge.runtime.pipeline import Inspector
from anomedge.runtime.preprocess import read_image
with Inspector(Artifact.load({str(tiny_artifact.root)!r}), "onnxruntime") as insp:
    r = insp.inspect([read_image({str(elpv_paths[0])!r})])
print(json.dumps({{"score": float(r.scores[0]), "torch": [m for m in ("torch", "timm", "torchvision") if m in sys.modules]}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["torch"] == []
    assert result["score"] > 0
