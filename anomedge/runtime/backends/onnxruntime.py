"""onnxruntime backend: CPU by default; CUDA / TensorRT execution providers on request.

A requested provider that onnxruntime cannot load is an error (onnxruntime itself silently falls
back to CPU); ``allow_fallback=True`` accepts the fallback and says so in ``self.providers``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import BackendUnavailable
from .base import Backend

# device → the provider list handed to onnxruntime (first is the one asked for).
PROVIDERS: dict[str, list[str]] = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    install_hint = "pip install onnxruntime   (or onnxruntime-gpu for CUDA / TensorRT; never both)"

    @classmethod
    def check_available(cls) -> None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError as exc:
            raise BackendUnavailable(f"onnxruntime is not installed: {cls.install_hint}") from exc

    def __init__(self, artifact, device: str = "auto", threads: int | None = None,
                 model_file: str = "model.onnx", allow_fallback: bool = False,
                 provider_options: dict[str, Any] | None = None, spinning: bool = False, **options: Any):
        super().__init__(artifact, device, **options)
        self.spinning = spinning
        self.threads = threads
        self.model_file = model_file
        self.allow_fallback = allow_fallback
        self.provider_options = provider_options or {}
        self.session = None
        self.providers: list[str] = []

    def open(self) -> None:
        import onnxruntime as ort

        device = "cpu" if self.device == "auto" else self.device
        if device not in PROVIDERS:
            raise BackendUnavailable(f"onnxruntime device '{device}': expected one of {', '.join(PROVIDERS)}")
        wanted = PROVIDERS[device]
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads:
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
        # Idle ORT threads spin after each run by default and then fight the host scoring kernel's BLAS
        # threads for the cores: measured 8.2 ms → 3.5 ms for the backbone inside the pipeline.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spinning else "0")
        provider_options = [self.provider_options.get(p, {}) for p in wanted]
        self.session = ort.InferenceSession(str(self.artifact.path(self.model_file)), options,
                                            providers=wanted, provider_options=provider_options)
        self.providers = self.session.get_providers()
        if wanted[0] not in self.providers and not self.allow_fallback:
            raise BackendUnavailable(
                f"onnxruntime could not load {wanted[0]} (got {', '.join(self.providers)}); install onnxruntime-gpu "
                "with a matching CUDA, or pass --allow-fallback to run on CPU"
            )
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.input_name = self.session.get_inputs()[0].name

    def _infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if self.session is None:
            self.open()
        values = self.session.run(self.output_names, {self.input_name: batch})
        return dict(zip(self.output_names, values))


BACKEND = OnnxRuntimeBackend
