"""Triton python-backend model: the anomedge runtime behind Triton (copied as ``<version>/model.py``).

Loads ``<version>/artifact`` (sha256-verified; its digest must equal the config parameter
``anomedge_artifact_sha256``) into an ``Inspector`` on onnxruntime (CPU, ``threads`` parameter, 0 = all
cores). ``execute`` joins the requests that Triton's dynamic batcher hands it into one batch,
(N,3,H,W) FP32 preprocessed frames, runs backbone + scoring head + map once, and answers each request
with its rows of ``patch_scores`` (n,h,w) and ``anomaly_map`` (n,H,W). A failing batch answers every
request in it with the error (the client turns it into ERROR records: fail closed).

Runs inside Triton's stub process: it needs ``anomedge`` (base install) importable there.
"""

import json
from pathlib import Path

import numpy as np

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported outside Triton (tests, ad-triton copying this file)
    pb_utils = None


class TritonPythonModel:
    def initialize(self, args):
        try:
            from anomedge.artifact import Artifact
            from anomedge.runtime.pipeline import Inspector
        except ImportError as exc:
            raise RuntimeError(f"the Triton python backend cannot import anomedge ({exc}): pip install anomedge "
                               "into the Python the stub runs (numpy < 2 for Triton ≤ 2.5x)") from exc
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        artifact = Artifact.load(Path(__file__).resolve().parent / "artifact")
        expected = params.get("anomedge_artifact_sha256")
        if artifact.sha256 != expected:
            raise RuntimeError(f"artifact sha256 {artifact.sha256[:12]}… does not match config.pbtxt "
                               f"{str(expected)[:12]}…; rewrite the repository with ad-triton")
        threads = int(params.get("threads", "0") or 0) or None
        self.inspector = Inspector(artifact, "onnxruntime", threads=threads)
        self.input_name = artifact.metadata.input.name

    def execute(self, requests):
        batches = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        try:
            patch, maps = self.score(np.concatenate(batches) if len(batches) > 1 else batches[0])
        except Exception as exc:  # one failing batch answers its requests with the error, never kills the model
            return [pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(exc))) for _ in requests]
        responses, start = [], 0
        for batch in batches:
            stop = start + len(batch)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("patch_scores", np.ascontiguousarray(patch[start:stop])),
                pb_utils.Tensor("anomaly_map", np.ascontiguousarray(maps[start:stop]))]))
            start = stop
        return responses

    def score(self, batch: np.ndarray):
        """(N,3,H,W) float32 → (patch_scores (N,h,w), anomaly_map (N,H,W)) float32, the local runtime's stages."""
        stages = self.inspector.stages
        patch = np.asarray(stages.score(stages.infer(np.ascontiguousarray(batch, dtype=np.float32))), np.float32)
        _, maps = stages.postprocess(patch)
        return patch, np.asarray(maps, np.float32)

    def finalize(self):
        self.inspector.close()
