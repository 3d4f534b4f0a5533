"""OpenVINO backend: the artifact's ONNX graph on Intel CPUs, iGPUs and NPUs (``device`` CPU|GPU|NPU|AUTO).

Inference precision is explicit: OpenVINO's CPU plugin silently runs in bf16 on CPUs with bf16
support (≈1 % score drift on our dev CPU), so ``precision`` (fp32|bf16|fp16, also spelled
f32|f16) is passed as ``INFERENCE_PRECISION_HINT``; the default is the precision recorded in the
artifact (``model.precision`` or ``scoring.precision``), else fp32. ``model_file`` selects a
variant ONNX (e.g. ``model.int8.onnx``) as for the onnxruntime backend. NPUs need static shapes:
the graph is reshaped to batch 1 there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import BackendUnavailable, InputError
from .base import Backend, BackendOptions

DEVICES = ("CPU", "GPU", "NPU", "AUTO")
# anomedge precision name → OpenVINO element type name for INFERENCE_PRECISION_HINT.
PRECISIONS: dict[str, str] = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
ALIASES = {"f32": "fp32", "float32": "fp32", "f16": "fp16", "float16": "fp16"}


def normalise_precision(value: str) -> str:
    """'f32'/'fp32'/'float32' → 'fp32', etc.; InputError for anything else."""
    name = ALIASES.get(str(value).lower(), str(value).lower())
    if name not in PRECISIONS:
        raise InputError(f"OpenVINO precision '{value}': expected one of fp32|bf16|fp16 (or f32|f16)")
    return name


def recorded_precision(artifact) -> str:
    """The inference precision recorded in the artifact's metadata, or fp32 when it says nothing."""
    meta = artifact.metadata
    value = meta.model.get("precision") or meta.scoring.get("precision") or "fp32"
    return normalise_precision(value) if str(value).lower() in {**PRECISIONS, **ALIASES} else "fp32"


@dataclass(frozen=True)
class OpenVinoOptions(BackendOptions):
    """performance_hint: OpenVINO's PERFORMANCE_HINT (LATENCY|THROUGHPUT)."""

    performance_hint: str = "LATENCY"


class OpenVinoBackend(Backend):
    name = "openvino"
    install_hint = "pip install 'anomedge[openvino]'   (or: pip install openvino)"
    Options = OpenVinoOptions

    @classmethod
    def check_available(cls) -> None:
        try:
            import openvino  # noqa: F401
        except ImportError as exc:
            raise BackendUnavailable(f"OpenVINO is not installed: {cls.install_hint}") from exc

    def __init__(self, artifact, device: str = "auto", **options: Any):
        if options.get("precision"):  # f32 / f16 spellings → the precision table's names
            options["precision"] = normalise_precision(options["precision"])
        super().__init__(artifact, device, **options)
        self.threads = self.options.threads
        self.model_file = self.options.model_file or "model.onnx"
        self.precision = self.options.precision or recorded_precision(artifact)
        self.performance_hint = self.options.performance_hint
        self.compiled = None
        self.request = None

    def _device(self) -> str:
        device = "CPU" if self.device == "auto" else str(self.device).upper()
        if device not in DEVICES:
            raise InputError(f"OpenVINO device '{self.device}': expected one of {', '.join(DEVICES)}")
        return device

    def open(self) -> None:
        import openvino as ov

        device = self._device()
        core = ov.Core()
        if device != "AUTO" and device not in {d.split(".")[0] for d in core.available_devices}:
            raise BackendUnavailable(
                f"OpenVINO device {device} not found (have: {', '.join(core.available_devices)}); "
                "install the device's driver or use --device CPU")
        model = core.read_model(str(self.artifact.path(self.model_file)))
        spec = self.artifact.metadata.input
        if device == "NPU":
            model.reshape({model.inputs[0].get_any_name(): [1, 3, spec.height, spec.width]})
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": PRECISIONS[self.precision],
                                  "PERFORMANCE_HINT": self.performance_hint}
        if self.threads and device == "CPU":
            config["INFERENCE_NUM_THREADS"] = int(self.threads)
        try:
            self.compiled = core.compile_model(model, device, config)
        except RuntimeError as exc:
            raise BackendUnavailable(f"OpenVINO could not compile {self.model_file} for {device} at "
                                     f"{self.precision}: {str(exc).splitlines()[0]}") from exc
        if device == "CPU":
            # Refuse a silent precision change: the plugin reports what it actually runs.
            hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")
            actual = str(hint.to_string() if hasattr(hint, "to_string") else hint).lower()
            actual = {"f32": "fp32", "float32": "fp32", "bf16": "bf16", "bfloat16": "bf16",
                      "f16": "fp16", "float16": "fp16"}.get(actual, actual)
            if actual != self.precision:
                raise BackendUnavailable(f"OpenVINO on this CPU runs {actual}, not the requested {self.precision}; "
                                         "choose --precision fp32 (supported everywhere)")
        self.request = self.compiled.create_infer_request()
        self.output_names = [out.get_any_name() for out in self.compiled.outputs]

    def close(self) -> None:
        self.request = None
        self.compiled = None

    def _infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if self.request is None:
            self.open()
        if self._device() == "NPU" and batch.shape[0] != 1:
            return {k: np.concatenate(v) for k, v in _stack([self._infer(batch[i:i + 1]) for i in range(len(batch))]).items()}
        results = self.request.infer({0: batch})
        return {name: np.array(results[out], copy=True) for name, out in zip(self.output_names, self.compiled.outputs)}


def _stack(parts: list[dict[str, np.ndarray]]) -> dict[str, list[np.ndarray]]:
    return {k: [p[k] for p in parts] for k in parts[0]}


BACKEND = OpenVinoBackend
