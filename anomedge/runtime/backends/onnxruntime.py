"""onnxruntime backend: CPU by default; CUDA / TensorRT execution providers on request.

A requested provider that onnxruntime cannot load is an error (onnxruntime itself silently falls
back to CPU, at ``open()`` and again on an EP failure during a run: ``disable_fallback()`` stops the
latter); ``allow_fallback=True`` accepts both and says so in ``self.providers``. After ``open()``,
``self.placement`` maps each provider to the nodes it took (onnxruntime ≥ 1.26), and nodes the asked
GPU provider did not take are warned about in one line (``self.not_placed``).

GPU libraries in a torch-free process: pip's onnxruntime-gpu finds the ``nvidia-*`` wheels' CUDA /
cuDNN libraries only after ``import torch`` or ``onnxruntime.preload_dlls()`` (onnxruntime ≥ 1.21),
and TensorRT's only after its ``tensorrt_libs`` package is loaded: ``preload_gpu_libraries`` does
both before the session is made. onnxruntime and onnxruntime-gpu installed together share one
module folder (a mix of both): refused for GPU devices, with the fix.

``precision`` (fp32|fp16|int8) picks the ONNX variant recorded in ``model.variants`` (``model_file``
overrides it); on the TensorRT EP it also sets ``trt_fp16_enable`` / ``trt_int8_enable`` (INT8 from
the symmetric Q/DQ variant: explicit quantisation, no calibration table) and a batch profile
1..``max_batch`` (``trt_profile_*_shapes``) so a new batch size does not rebuild the engine.
``engine_cache`` (a folder) turns on the TensorRT EP's engine and timing caches there.
``provider_options`` ({provider: {key: value}}) is merged last, so any documented EP option can
still be set by hand.

INT8 on the CPU provider: onnxruntime fuses DQ→Conv→Q into integer kernels, and on x86 CPUs without
VNNI those use VPMADDUBSW, whose 16-bit pair sums saturate (onnxruntime's quantisation docs name it).
Measured on an AVX2-only EPYC: 58 % feature error fused vs 23 % for the Q/DQ graph's own arithmetic.
``qdq_fusion="auto"`` (default) therefore keeps Q/DQ unfused on such CPUs — the answer the graph
defines, at float speed (no integer speed-up exists there anyway); ``"on"`` / ``"off"`` force it.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import io
import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import ArtifactError, BackendUnavailable, InputError
from .base import Backend, BackendOptions

# device → the provider list handed to onnxruntime (first is the one asked for).
PROVIDERS: dict[str, list[str]] = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


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


GPU_DEVICES = ("cuda", "tensorrt")
TENSORRT_LIBS = ("libnvinfer.so.*", "libnvinfer_plugin.so.*", "libnvonnxparser.so.*")


def onnxruntime_distributions() -> dict[str, str]:
    """{distribution: site folder} of the installed pip distributions that provide ``onnxruntime``."""
    from importlib import metadata

    names = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml")
    found = {}
    for name in names:
        try:
            found[name] = str(metadata.distribution(name).locate_file(""))
        except metadata.PackageNotFoundError:
            continue
    return found


def check_single_distribution(found: dict[str, str]) -> None:
    """BackendUnavailable if two onnxruntime distributions share one site folder (one module folder,
    files of both mixed); distributions in separate folders just shadow each other."""
    by_folder: dict[str, list[str]] = {}
    for name, folder in found.items():
        by_folder.setdefault(folder, []).append(name)
    for folder, names in by_folder.items():
        if len(names) > 1:
            raise BackendUnavailable(
                f"{' and '.join(names)} are both installed in {folder} (one onnxruntime folder, files of both): "
                "pip uninstall -y onnxruntime onnxruntime-gpu, then install the onnxruntime-gpu of your CUDA major "
                "(docs/gpu.md)")


def preload_gpu_libraries(device: str) -> tuple[list[str], list[str]]:
    """Load the CUDA / cuDNN (and for ``tensorrt`` the TensorRT) libraries of the pip wheels, so a
    torch-free process finds them. Returns (what was loaded, libraries that were not found)."""
    import onnxruntime as ort

    loaded: list[str] = []
    missing: list[str] = []
    if device not in GPU_DEVICES:
        return loaded, missing
    if hasattr(ort, "preload_dlls"):  # onnxruntime-gpu >= 1.21; it prints what it cannot load
        with contextlib.redirect_stdout(io.StringIO()) as said:
            ort.preload_dlls()
        missing += [line.split()[3].rstrip(":") for line in said.getvalue().splitlines()
                    if line.startswith("Failed to load ") and len(line.split()) > 3]
        loaded.append("onnxruntime.preload_dlls")
    if device == "tensorrt":
        try:
            import tensorrt_libs  # the pip TensorRT wheels keep libnvinfer here, off the loader path
        except ImportError:
            missing.append("tensorrt_libs (libnvinfer.so.10)")
            return loaded, missing
        folder = os.path.dirname(tensorrt_libs.__file__)
        for pattern in TENSORRT_LIBS:
            for path in sorted(glob.glob(os.path.join(folder, pattern))):
                try:
                    ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
                except OSError:
                    missing.append(os.path.basename(path))
                    continue
                loaded.append(os.path.basename(path))
    return loaded, missing


def graph_placement(session) -> dict[str, list[str]] | None:
    """{provider: [node names]} from the session (needs ``session.record_ep_graph_assignment_info``;
    onnxruntime ≥ 1.26), or None where this onnxruntime cannot say."""
    if not hasattr(session, "get_provider_graph_assignment_info"):
        return None
    placement: dict[str, list[str]] = {}
    for subgraph in session.get_provider_graph_assignment_info():
        placement.setdefault(subgraph.ep_name, []).extend(node.name or node.op_type for node in subgraph.get_nodes())
    return placement


def trt_profile(input_name: str, height: int, width: int, max_batch: int) -> dict[str, str]:
    """TensorRT EP profile options for batch 1..``max_batch`` (opt 1: the per-frame case)."""
    shape = lambda n: f"{input_name}:{n}x3x{height}x{width}"  # noqa: E731
    return {"trt_profile_min_shapes": shape(1), "trt_profile_opt_shapes": shape(1),
            "trt_profile_max_shapes": shape(max_batch)}


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


def merged_provider_options(wanted: list[str], defaults: dict[str, dict[str, str]],
                            user: dict[str, dict[str, Any]]) -> list[dict[str, str]]:
    """One options dict per provider in ``wanted``: the defaults, then the user's keys (as strings)."""
    unknown = sorted(set(user) - set(wanted))
    if unknown:
        raise InputError(f"provider_options for {', '.join(unknown)}: this device uses {', '.join(wanted)}")
    return [{**defaults.get(p, {}), **{k: str(v) for k, v in user.get(p, {}).items()}} for p in wanted]


@dataclass(frozen=True)
class OnnxRuntimeOptions(BackendOptions):
    """allow_fallback: accept a CPU fallback; provider_options: {provider: {key: value}}; spinning:
    ORT's idle spinning; engine_cache: TensorRT EP cache folder; device_id: GPU index; qdq_fusion:
    auto|on|off; max_batch: the TensorRT EP profile's largest batch."""

    allow_fallback: bool = False
    provider_options: dict | None = None
    spinning: bool = False
    engine_cache: str | None = None
    device_id: int = 0
    qdq_fusion: str = "auto"
    max_batch: int = 8

    def __post_init__(self) -> None:
        if self.qdq_fusion not in QDQ_FUSION:
            raise InputError(f"onnxruntime qdq_fusion '{self.qdq_fusion}': expected one of {', '.join(QDQ_FUSION)}")
        if not isinstance(self.max_batch, int) or self.max_batch < 1:
            raise InputError(f"onnxruntime max_batch {self.max_batch!r}: expected an integer ≥ 1")


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    install_hint = "pip install onnxruntime   (or onnxruntime-gpu for CUDA / TensorRT; never both)"
    Options = OnnxRuntimeOptions

    @classmethod
    def check_available(cls) -> None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError as exc:
            raise BackendUnavailable(f"onnxruntime is not installed: {cls.install_hint}") from exc

    def __init__(self, artifact, device: str = "auto", **options: Any):
        super().__init__(artifact, device, **options)
        o: OnnxRuntimeOptions = self.options
        self.qdq_fusion = o.qdq_fusion
        self.qdq_fused: bool | None = None  # after open() on CPU: whether Q/DQ nodes may fuse (float graphs have none)
        self.engine_cache = o.engine_cache
        self.device_id = o.device_id
        self.spinning = o.spinning
        self.threads = o.threads
        if o.model_file and self.precision != "fp32" and o.model_file != artifact.variant(self.precision):
            raise InputError(f"onnxruntime precision {self.precision} runs {artifact.variant(self.precision)}, not "
                             f"{o.model_file}: the graph placement (model.graph.onnx) exists in fp32 only; use placement host")
        self.model_file = o.model_file or artifact.variant(self.precision)
        self.allow_fallback = o.allow_fallback
        self.provider_options = o.provider_options or {}
        self.session = None
        self.providers: list[str] = []
        self.preloaded: list[str] = []
        self.missing_libraries: list[str] = []
        self.placement: dict[str, list[str]] | None = None
        self.not_placed: list[str] = []

    def open(self) -> None:
        import onnxruntime as ort

        device = "cpu" if self.device == "auto" else self.device
        if device not in PROVIDERS:
            raise BackendUnavailable(f"onnxruntime device '{device}': expected one of {', '.join(PROVIDERS)}")
        wanted = PROVIDERS[device]
        if device in GPU_DEVICES:
            check_single_distribution(onnxruntime_distributions())
            self.preloaded, self.missing_libraries = preload_gpu_libraries(device)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads:
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
        # Idle ORT threads spin after each run by default and then fight the host scoring kernel's BLAS
        # threads for the cores: measured 8.2 ms → 3.5 ms for the backbone inside the pipeline.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spinning else "0")
        options.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
        if device == "cpu":  # by the CPU, not the precision label: model_file may name a Q/DQ graph too
            self.qdq_fused = self.qdq_fusion == "on" or (self.qdq_fusion == "auto" and not int8_kernels_saturate())
            if not self.qdq_fused:
                options.add_session_config_entry("session.disable_quant_qdq", "1")
        defaults = provider_options_for(device, self.precision, self.engine_cache, self.device_id)
        if device == "tensorrt":
            spec = self.artifact.metadata.input
            max_batch = self.options.max_batch if spec.dynamic_batch else 1
            defaults["TensorrtExecutionProvider"].update(trt_profile(spec.name, spec.height, spec.width, max_batch))
        path = self.artifact.path(self.model_file)
        try:
            self.session = ort.InferenceSession(str(path), options, providers=wanted,
                                                provider_options=merged_provider_options(wanted, defaults,
                                                                                         self.provider_options))
        except Exception as exc:  # onnxruntime's InvalidGraph / InvalidProtobuf / Fail derive from Exception only
            raise ArtifactError(f"{path}: onnxruntime cannot load this graph ({str(exc).splitlines()[0][:200]}); "
                                "copy the artifact again or re-export") from None
        self.providers = self.session.get_providers()
        if wanted[0] not in self.providers and not self.allow_fallback:
            missing = f"; not found: {', '.join(self.missing_libraries[:3])}" if self.missing_libraries else ""
            raise BackendUnavailable(
                f"onnxruntime could not load {wanted[0]} (got {', '.join(self.providers)}{missing}); install "
                "anomedge[cu12] or [cu13] for your CUDA major (docs/gpu.md), or pass --allow-fallback to run on CPU"
            )
        if not self.allow_fallback:
            self.session.disable_fallback()  # an EP failure during run() raises instead of rerunning on CPU
        self.placement = graph_placement(self.session)
        if self.placement is not None and device in GPU_DEVICES:
            self.not_placed = [n for ep, nodes in self.placement.items() if ep != wanted[0] for n in nodes]
            if self.not_placed:
                warnings.warn(f"{wanted[0]} took {len(self.placement.get(wanted[0], []))} node(s); "
                              f"{len(self.not_placed)} node(s) run elsewhere: {placement_summary(self.placement)}",
                              stacklevel=2)
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.input_name = self.session.get_inputs()[0].name

    def _infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if self.session is None:
            self.open()
        values = self.session.run(self.output_names, {self.input_name: batch})
        return dict(zip(self.output_names, values))


def placement_summary(placement: dict[str, list[str]]) -> str:
    """'TensorrtExecutionProvider 1, CUDAExecutionProvider 3 (Resize_0, …)' — nodes per provider."""
    return ", ".join(f"{ep} {len(nodes)} ({', '.join(nodes[:3])}{', …' if len(nodes) > 3 else ''})"
                     for ep, nodes in placement.items())


BACKEND = OnnxRuntimeBackend
