"""Triton backend: the camera box preprocesses, a Triton server scores (``ad-run --backend triton``).

The box keeps the artifact folder (its metadata: input spec, reduction, thresholds) and sends the
preprocessed batch (N,3,H,W) FP32 as a binary tensor over HTTP or gRPC to a model written by
``ad-triton`` (python or onnx form: same contract); it gets ``patch_scores`` (N,h,w) and
``anomaly_map`` (N,H,W) back as binary tensors, reduces the image score here with the metadata's
reduction, and the pipeline decides here: thresholds never leave the box's metadata, so decisions,
evidence, sinks and the live view are those of a local backend. Many boxes share one server; its
dynamic batcher forms the batches.

``open()`` checks that the server is live, the model ready, and that the model's config parameter
``anomedge_artifact_sha256`` equals this artifact's digest (another artifact → ArtifactError).
A failed request is a ``RemoteInferenceError`` (an InputError: that frame becomes an ERROR record,
fail closed, and the run goes on).

Options: ``url`` HOST:PORT (required), ``protocol`` http|grpc, ``model`` (default "anomedge"),
``model_version`` ("" = the server's policy), ``timeout_s`` per request.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import ArtifactError, BackendUnavailable, InputError
from .base import Backend, BackendOptions, Stages

PROTOCOLS = {"http": "tritonclient.http", "grpc": "tritonclient.grpc"}
OUTPUTS = ("patch_scores", "anomaly_map")
SHA_PARAMETER = "anomedge_artifact_sha256"
DEFAULT_MODEL = "anomedge"


class RemoteInferenceError(InputError):
    """The server could not score a frame: that frame is an ERROR record, the run goes on."""


def _parameters(config: dict[str, Any]) -> dict[str, str]:
    config = config.get("config", config)  # gRPC as_json wraps the ModelConfig in {"config": …}
    params = config.get("parameters", {})
    return {k: (v.get("string_value", v.get("stringValue", "")) if isinstance(v, dict) else str(v))
            for k, v in params.items()}


@dataclass(frozen=True)
class TritonOptions(BackendOptions):
    """url: HOST:PORT of the server (required); protocol: http | grpc; model: name in the repository
    (default ``DEFAULT_MODEL``); model_version: "" = the server's latest; timeout_s: per request."""

    url: str | None = None
    protocol: str = "http"
    model: str | None = None
    model_version: str = ""
    timeout_s: float = 30.0


class TritonBackend(Backend):
    name = "triton"
    Options = TritonOptions
    install_hint = "pip install 'tritonclient[http,grpc]'   (or pip install 'anomedge[triton]')"

    @classmethod
    def check_available(cls) -> None:
        try:
            import tritonclient.http  # noqa: F401
        except ImportError as exc:
            raise BackendUnavailable(f"backend 'triton' needs tritonclient, which is not installed: {cls.install_hint}") from exc

    def __init__(self, artifact, device: str = "auto", **options: Any):
        super().__init__(artifact, device, **options)
        o: TritonOptions = self.options
        url, protocol, timeout_s = o.url, o.protocol, o.timeout_s
        if not url:
            raise InputError("--backend triton needs --url HOST:PORT of the Triton server (e.g. 127.0.0.1:8000)")
        host, _, port = url.rpartition(":")
        if "://" in url or not host or not port.isdigit():
            raise InputError(f"--url '{url}': expected HOST:PORT without a scheme, e.g. 127.0.0.1:8000 (http) or :8001 (grpc)")
        if protocol not in PROTOCOLS:
            raise InputError(f"--protocol '{protocol}': expected one of {', '.join(PROTOCOLS)}")
        if not timeout_s > 0:
            raise InputError(f"timeout_s {timeout_s}: expected a positive number of seconds")
        self.url, self.protocol, self.model = url, protocol, o.model or DEFAULT_MODEL
        self.model_version, self.timeout_s = str(o.model_version or ""), float(timeout_s)
        self.client = None
        self.module = None

    def open(self) -> None:
        try:
            self.module = importlib.import_module(PROTOCOLS[self.protocol])
        except ImportError as exc:
            raise BackendUnavailable(f"--protocol {self.protocol} needs {PROTOCOLS[self.protocol]}: {self.install_hint}") from exc
        from tritonclient.utils import InferenceServerException

        if self.protocol == "http":
            self.client = self.module.InferenceServerClient(self.url, connection_timeout=self.timeout_s,
                                                            network_timeout=self.timeout_s)
        else:
            self.client = self.module.InferenceServerClient(self.url)
        where = f"triton {self.protocol}://{self.url}"
        try:
            live = self.client.is_server_live()
            ready = live and self.client.is_model_ready(self.model, self.model_version)
            config = self.client.get_model_config(self.model, self.model_version, **self._json()) if ready else {}
        except (InferenceServerException, OSError, ConnectionError) as exc:
            raise BackendUnavailable(f"{where}: cannot reach the server ({exc}); start it with "
                                     "tritonserver --model-repository REPO and check --url / --protocol") from exc
        if not ready:
            raise BackendUnavailable(f"{where}: model '{self.model}' is not ready (server live: {live}); "
                                     "check --model and the server log")
        served = _parameters(config).get(SHA_PARAMETER)
        if served != self.artifact.sha256:
            raise ArtifactError(f"{where}: model '{self.model}' serves artifact {str(served)[:12]}…, this box has "
                                f"{self.artifact.sha256[:12]}… ({self.artifact.root}); write the repository from this "
                                "artifact with ad-triton or point --artifact at the served one")

    def _json(self) -> dict[str, Any]:
        return {"as_json": True} if self.protocol == "grpc" else {}

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    def _infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        from tritonclient.utils import InferenceServerException

        if self.client is None:
            self.open()
        m = self.module
        inp = m.InferInput(self.artifact.metadata.input.name, list(batch.shape), "FP32")
        if self.protocol == "http":
            inp.set_data_from_numpy(batch, binary_data=True)
            outputs = [m.InferRequestedOutput(name, binary_data=True) for name in OUTPUTS]
            extra: dict[str, Any] = {}
        else:
            inp.set_data_from_numpy(batch)
            outputs = [m.InferRequestedOutput(name) for name in OUTPUTS]
            extra = {"client_timeout": self.timeout_s}
        try:
            result = self.client.infer(self.model, [inp], model_version=self.model_version, outputs=outputs, **extra)
        except (InferenceServerException, OSError, ConnectionError) as exc:
            raise RemoteInferenceError(f"triton {self.url} model '{self.model}': inference failed ({exc})") from exc
        values = {name: result.as_numpy(name) for name in OUTPUTS}
        n = len(batch)
        for name, value in values.items():
            if value is None or value.dtype != np.float32 or value.ndim != 3 or len(value) != n:
                got = None if value is None else (value.shape, str(value.dtype))
                raise RemoteInferenceError(f"triton {self.url} model '{self.model}': output {name} {got}, "
                                           f"expected ({n}, ·, ·) float32")
        return values

    def stages(self) -> Stages:
        """Preprocess here, score on the server, reduce + keep its map here (same functions as local)."""
        from ...scoring.mask import masked_postprocess
        from ...scoring.postprocess import image_scores
        from ..preprocess import preprocess

        meta = self.artifact.metadata
        reduction = meta.postprocess["reduction"]

        def postprocess(outputs: dict[str, np.ndarray], mask=None) -> tuple[np.ndarray, np.ndarray]:
            if mask is not None:  # the server's map saw the masked cells: rebuild it here
                size = (meta.input.height, meta.input.width)
                return masked_postprocess(outputs["patch_scores"], mask, size, meta.postprocess["blur_sigma"], reduction)
            return image_scores(outputs["patch_scores"], reduction), outputs["anomaly_map"]

        return Stages(lambda frames: preprocess(frames, meta.input), self.infer, lambda outputs: outputs, postprocess)


BACKEND = TritonBackend
