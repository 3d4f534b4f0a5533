"""OpenVINO backend on this CPU vs onnxruntime, on the real tiny PatchCore artifact.

Tolerances: fp32 — scores within 1e-4 relative and maps within 1e-4 of their range (measured
1.2e-6 / 2.2e-6); bf16 — scores within 5 % relative (measured 1.6 % max over 20 held-out ELPV cells), and
it must differ from fp32 (proving the hint took effect). Frames are cells the artifact was not fitted
on: on its own training cells near-zero kNN distances amplify float noise through the sqrt.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

pytest.importorskip("openvino", reason="OpenVINO is not installed: pip install 'anomedge[openvino]'")

from anomedge.artifact import Artifact  # noqa: E402
from anomedge.errors import BackendUnavailable, InputError  # noqa: E402
from anomedge.runtime.backends.openvino import normalise_precision, recorded_precision  # noqa: E402
from anomedge.runtime.pipeline import Inspector  # noqa: E402

pytestmark = [pytest.mark.openvino, pytest.mark.slow]


@pytest.fixture(scope="module")
def frames(elpv_paths):
    return [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in elpv_paths[20:40]]


def _scores(artifact, backend, frames, **options):
    with Inspector(artifact, backend, threads=2, **options) as inspector:
        results = [inspector.inspect([f]) for f in frames]
        precision = inspector.backend.precision
    return np.concatenate([r.scores for r in results]), np.concatenate([r.maps for r in results]), precision


@pytest.fixture(scope="module")
def reference(tiny_artifact, frames):
    return _scores(tiny_artifact, "onnxruntime", frames)


def test_fp32_matches_onnxruntime(tiny_artifact, frames, reference):
    ref_scores, ref_maps, _ = reference
    scores, maps, precision = _scores(tiny_artifact, "openvino", frames, precision="f32")
    assert precision == "fp32"
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-4)
    np.testing.assert_allclose(maps, ref_maps, rtol=0, atol=1e-4 * float(np.ptp(ref_maps)))


def cpu_capabilities() -> list[str]:
    import openvino as ov

    return list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def test_bf16_is_close_but_not_identical(tiny_artifact, frames, reference):
    ref_scores, _, _ = reference
    if "BF16" not in cpu_capabilities():  # e.g. AVX2-only CPUs: the plugin runs fp32 whatever it is told
        with pytest.raises(BackendUnavailable, match="runs fp32, not the requested bf16"):
            _scores(tiny_artifact, "openvino", frames, precision="bf16")
        return
    scores, _, precision = _scores(tiny_artifact, "openvino", frames, precision="bf16")
    assert precision == "bf16"
    np.testing.assert_allclose(scores, ref_scores, rtol=0.05)
    drift = np.max(np.abs(scores - ref_scores) / np.abs(ref_scores))
    print(f"OpenVINO bf16 max relative score drift vs onnxruntime fp32: {drift:.4f}")
    assert drift > 1e-5, "bf16 gave fp32-identical scores: the precision hint was ignored"


def test_default_precision_comes_from_the_artifact(tiny_artifact):
    from anomedge.runtime.backends.openvino import OpenVinoBackend

    assert recorded_precision(tiny_artifact) == "fp32"  # silent metadata → fp32, not OpenVINO's bf16
    meta = tiny_artifact.metadata
    tagged = Artifact(tiny_artifact.root, dataclasses.replace(meta, model={**meta.model, "precision": "bf16"}))
    assert OpenVinoBackend(tagged).precision == "bf16"
    assert OpenVinoBackend(tagged, precision="fp32").precision == "fp32"


def test_bad_precision_and_device_are_refused(tiny_artifact):
    from anomedge.runtime.backends.openvino import OpenVinoBackend

    with pytest.raises(InputError, match="fp32|bf16|fp16"):
        normalise_precision("int4")
    with pytest.raises(InputError, match="CPU, GPU, NPU, AUTO"):
        OpenVinoBackend(tiny_artifact, device="tpu").open()


def test_missing_device_is_backend_unavailable(tiny_artifact):
    import openvino as ov

    from anomedge.runtime.backends.openvino import OpenVinoBackend

    if "NPU" in ov.Core().available_devices:
        pytest.skip("this machine has an NPU")
    with pytest.raises(BackendUnavailable, match="NPU not found"):
        OpenVinoBackend(tiny_artifact, device="NPU").open()


def test_dynamic_batch(tiny_artifact):
    from anomedge.runtime.backends.onnxruntime import OnnxRuntimeBackend
    from anomedge.runtime.backends.openvino import OpenVinoBackend

    rng = np.random.default_rng(0)
    spec = tiny_artifact.metadata.input
    batch = rng.normal(size=(3, 3, spec.height, spec.width)).astype(np.float32)
    with OpenVinoBackend(tiny_artifact, precision="fp32", threads=2) as ov_backend, \
            OnnxRuntimeBackend(tiny_artifact, threads=2) as ort_backend:
        got, want = ov_backend.infer(batch)["features"], ort_backend.infer(batch)["features"]
    assert got.shape == want.shape and got.shape[0] == 3
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * float(np.abs(want).max()))
