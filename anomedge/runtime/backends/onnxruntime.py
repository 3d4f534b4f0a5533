"""onnxruntime backend: CPU by default; CUDA / TensorRT execution providers on request.

A requested provider that onnxruntime cannot load is an error (onnxruntime itself silently falls
back to CPU); ``allow_fallback=True`` accepts the fallback and says so in ``self.providers``.

``precision`` (fp32|fp16|int8) picks the ONNX variant recorded in ``model.variants`` (``model_file``
overrides it); on the TensorRT EP it also sets ``trt_fp16_enable`` / ``trt_int8_enable`` (INT8 from
the Q/DQ variant: explicit quantisation, no calibration table). ``engine_cache`` (a folder) turns on
the TensorRT EP's engine and timing caches there. ``provider_options`` ({provider: {key: value}})
is merged last, so any documented EP option can still be set by hand.

INT8 on the CPU provider: onnxruntime fuses DQ→Conv→Q into integer kernels, and on x86 CPUs without
VNNI those use VPMADDUBSW, whose 16-bit pair sums saturate (onnxruntime's quantisation docs name it).
Measured on an AVX2-only EPYC: 58 % feature error fused vs 23 % for the Q/DQ graph's own arithmetic.
``qdq_fusion="auto"`` (default) therefore keeps Q/DQ unfused on such CPUs — the answer the graph
defines, at float speed (no integer speed-up exists there anyway); ``"on"`` / ``"off"`` force it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import ArtifactError, BackendUnavailable, InputError
from .base import Backend

# device → the provider list handed to onnxruntime (first is the one asked for).
PROVIDERS: dict[str, list[str]] = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


PRECISIONS = ("fp32", "fp16", "int8")
QDQ_FUSION = ("auto", "on", "off")
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def int8_kernels_saturate(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True on an x86 CPU whose flags show no VNNI (its int8 GEMM can saturate); False elsewhere or unknown."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), None)
    except OSError:
        return False
    return flags is not None and not any(flag in flags for flag in VNNI_FLAGS)


def provider_options_for(device: str, precision: str = "fp32", engine_cache: str | None = None,
                         device_id: int = 0) -> dict[str, dict[str, str]]:
    """The documented EP options for ``device`` (cpu|cuda|tensorrt) at ``precision``, as strings."""
    options: dict[str, dict[str, str]] = {}
    if device in ("cuda", "tensorrt"):
        options["CUDAExecutionProvider"] = {"device_id": str(device_id), "cudnn_conv_algo_search": "HEURISTIC",
                                            "do_copy_in_default_stream": "1"}
    if device == "tensorrt":
        trt = {"device_id": str(device_id), "trt_fp16_enable": str(precision == "fp16"),
               "trt_int8_enable": str(precision == "int8")}
        if precision == "int8":
            trt["trt_int8_use_native_calibration_table"] = "False"  # scales come from the Q/DQ nodes
        if engine_cache:
            trt.update({"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(engine_cache),
                        "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(engine_cache)})
        options["TensorrtExecutionProvider"] = trt
    return options


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
                 model_file: str | None = None, precision: str = "fp32", allow_fallback: bool = False,
                 provider_options: dict[str, Any] | None = None, spinning: bool = False,
                 engine_cache: str | None = None, device_id: int = 0, qdq_fusion: str = "auto", **options: Any):
        super().__init__(artifact, device, **options)
        if precision not in PRECISIONS:
            raise InputError(f"onnxruntime precision '{precision}': expected one of {', '.join(PRECISIONS)}")
        if qdq_fusion not in QDQ_FUSION:
            raise InputError(f"onnxruntime qdq_fusion '{qdq_fusion}': expected one of {', '.join(QDQ_FUSION)}")
        self.qdq_fusion = qdq_fusion
        self.qdq_fused: bool | None = None  # after open() on CPU: whether Q/DQ nodes may fuse (float graphs have none)
        self.engine_cache = engine_cache
        self.device_id = device_id
        self.spinning = spinning
        self.threads = threads
        if model_file and precision != "fp32" and model_file != artifact.variant(precision):
            raise InputError(f"onnxruntime precision {precision} runs {artifact.variant(precision)}, not {model_file}: "
                             "the graph placement (model.graph.onnx) exists in fp32 only; use placement host")
        self.model_file = model_file or artifact.variant(precision)
        self.precision = precision
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
        if device == "cpu":  # by the CPU, not the precision label: model_file may name a Q/DQ graph too
            self.qdq_fused = self.qdq_fusion == "on" or (self.qdq_fusion == "auto" and not int8_kernels_saturate())
            if not self.qdq_fused:
                options.add_session_config_entry("session.disable_quant_qdq", "1")
        defaults = provider_options_for(device, self.precision, self.engine_cache, self.device_id)
        provider_options = [{**defaults.get(p, {}), **{k: str(v) for k, v in self.provider_options.get(p, {}).items()}}
                            for p in wanted]
        path = self.artifact.path(self.model_file)
        try:
            self.session = ort.InferenceSession(str(path), options, providers=wanted, provider_options=provider_options)
        except Exception as exc:  # onnxruntime's InvalidGraph / InvalidProtobuf / Fail derive from Exception only
            raise ArtifactError(f"{path}: onnxruntime cannot load this graph ({str(exc).splitlines()[0][:200]}); "
                                "copy the artifact again or re-export") from None
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
