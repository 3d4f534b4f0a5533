"""TensorRT backend: the artifact's ``model.engine`` with cuda-python buffers (no torch, no pycuda).

``open()`` checks the plan against this machine (ONNX hash, TensorRT version, GPU; see
``check_engine``) and against what is asked (``precision``, and ``model_file`` for graph placement:
the plan must have been built from that file), deserializes it, and allocates once, for the
profile's max batch: a device buffer and a pinned host buffer per I/O tensor, one stream; tensor
addresses are bound once. ``_infer`` sets the input shape (dynamic batch), copies H2D,
``execute_async_v3``, copies D2H, synchronises.

``cuda_graph=True`` replays batch-1 frames from a CUDA graph captured on a *dedicated* execution
context whose input shape is fixed at 1 — batches of other sizes run on the main context, so a shape
change never invalidates the captured work (TensorRT defers some work to the first enqueue after a
shape change; the capture context gets its flushing enqueue before capture). Capture uses
thread-local mode; a failed capture is ended (the stream leaves capture mode), warned about once,
and batch-1 frames then run uncaptured.
"""

from __future__ import annotations

import ctypes
import shlex
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import ArtifactError, BackendUnavailable, InputError
from .base import Backend, BackendOptions

ENGINE_FILE = "model.engine"

INSTALL = ("pip install 'anomedge[tensorrt-cu12]' (CUDA 12) or 'anomedge[tensorrt-cu13]' (CUDA 13, driver ≥ 580) "
           "with --extra-index-url https://pypi.nvidia.com (TensorRT's wheels live on NVIDIA's index; docs/gpu.md)")
# CUDA errors from cudaGetDeviceCount → what they mean here.
CUDA_HINTS = {
    "cudaErrorInsufficientDriver": "the NVIDIA driver is older than this cuda-python's CUDA major: install the "
                                   "extra of the driver's CUDA (nvidia-smi shows it; docs/gpu.md)",
    "cudaErrorNoDevice": "no CUDA device is visible (check the driver, CUDA_VISIBLE_DEVICES, or docker --gpus all)",
}


def cudart():
    """The CUDA runtime bindings: ``cuda.bindings.runtime`` (cuda-python ≥ 12.6) or the older ``cuda.cudart``."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        try:
            from cuda import cudart as runtime
        except ImportError as exc:
            raise BackendUnavailable(f"cuda-python is not installed: {INSTALL}") from exc
    return runtime


def cuda_error_name(err: Any) -> str:
    """'cudaErrorInsufficientDriver' for a cudaError_t."""
    name = cudart().cudaGetErrorName(err)[1]
    return name.decode() if isinstance(name, bytes) else str(name)


def check_cuda(result: tuple) -> Any:
    """cuda-python calls return (error, *values): raise on error, return the value(s)."""
    rt = cudart()
    err, values = result[0], result[1:]
    if err != rt.cudaError_t.cudaSuccess:
        raise BackendUnavailable(f"CUDA call failed: {cuda_error_name(err)}")
    return values[0] if len(values) == 1 else (values or None)


def gpu_count() -> int:
    """Visible CUDA devices; BackendUnavailable naming the CUDA error (and what it means) when none."""
    rt = cudart()
    err, count = rt.cudaGetDeviceCount()
    if err != rt.cudaError_t.cudaSuccess:
        name = cuda_error_name(err)
        hint = CUDA_HINTS.get(name, "check the driver, or docker --gpus all")
        raise BackendUnavailable(f"TensorRT needs an NVIDIA GPU: cudaGetDeviceCount failed with {name}: {hint}")
    if count < 1:
        raise BackendUnavailable(f"TensorRT needs an NVIDIA GPU: none found ({CUDA_HINTS['cudaErrorNoDevice']})")
    return count


def device_index(device: str | int | None) -> int:
    """'auto' / 'cuda' / 'gpu' → 0; 'cuda:N' / 'N' → N; InputError otherwise."""
    text = str(device).lower()
    if text in ("auto", "cuda", "gpu", "none"):
        return 0
    text = text.removeprefix("cuda:")
    if not text.isdigit():
        raise InputError(f"TensorRT device '{device}': expected cuda, cuda:N or a GPU index N")
    return int(text)


def host_dtype(trt, name: str, dtype) -> np.dtype:
    """The numpy dtype of an engine I/O tensor; ArtifactError for types numpy has no host buffer for
    (BF16, FP8, INT4: ``trt.nptype`` raises TypeError on them)."""
    try:
        return np.dtype(trt.nptype(dtype))
    except (TypeError, KeyError) as exc:
        raise ArtifactError(f"engine tensor {name} is {dtype}: no numpy host type; keep the ONNX's inputs and "
                            "outputs float32 (ad-quantize does) and rebuild the engine") from exc


def rebuild_command(artifact_root, precision: str, placement: str = "host") -> str:
    command = f"python -m anomedge.export.tensorrt {shlex.quote(str(artifact_root))} --precision {precision}"
    return command + (" --placement graph" if placement == "graph" else "")


def current_gpu(device: int = 0) -> dict[str, str]:
    """{'name', 'compute_capability'} of CUDA device ``device`` (cuda-python runtime API)."""
    rt = cudart()
    props = check_cuda(rt.cudaGetDeviceProperties(device))
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return {"name": name.rstrip("\x00"), "compute_capability": f"{props.major}.{props.minor}"}


def check_engine(artifact, record: dict[str, Any], tensorrt_version: str, gpu: dict[str, str]) -> None:
    """Raise ArtifactError if the plan in ``record`` was built from another ONNX, TensorRT or GPU."""
    fix = f"; rebuild it on this machine: {rebuild_command(artifact.root, record.get('precision', 'fp32'), record.get('placement', 'host'))}"
    onnx_name = record.get("onnx", "model.onnx")
    if artifact.metadata.files.get(onnx_name) != record.get("onnx_sha256"):
        raise ArtifactError(f"{ENGINE_FILE} was built from another {onnx_name} (sha256 differs){fix}")
    if record.get("tensorrt") != tensorrt_version:
        raise ArtifactError(f"{ENGINE_FILE} was built with TensorRT {record.get('tensorrt')}, "
                            f"this is TensorRT {tensorrt_version}{fix}")
    if record.get("compute_capability") != gpu["compute_capability"] or record.get("gpu") != gpu["name"]:
        raise ArtifactError(f"{ENGINE_FILE} was built for {record.get('gpu')} (sm {record.get('compute_capability')}), "
                            f"this GPU is {gpu['name']} (sm {gpu['compute_capability']}){fix}")


class _Buffer:
    """One I/O tensor: device memory + pinned host memory of ``nbytes``, numpy view on the host side."""

    def __init__(self, name: str, dtype: np.dtype, max_shape: tuple[int, ...]):
        rt = cudart()
        self.name, self.dtype = name, np.dtype(dtype)
        self.nbytes = int(np.prod(max_shape)) * self.dtype.itemsize
        self.device = check_cuda(rt.cudaMalloc(self.nbytes))
        self.host_ptr = check_cuda(rt.cudaMallocHost(self.nbytes))
        raw = (ctypes.c_byte * self.nbytes).from_address(int(self.host_ptr))
        self.host = np.frombuffer(raw, dtype=self.dtype)

    def view(self, shape: tuple[int, ...]) -> np.ndarray:
        return self.host[: int(np.prod(shape))].reshape(shape)

    def free(self) -> None:
        rt = cudart()
        rt.cudaFree(self.device)
        rt.cudaFreeHost(self.host_ptr)


@dataclass(frozen=True)
class TensorRtOptions(BackendOptions):
    """cuda_graph: replay batch 1 from a CUDA graph; device_id: GPU index (else from ``device``)."""

    cuda_graph: bool = False
    device_id: int | None = None


class TensorRtBackend(Backend):
    name = "tensorrt"
    install_hint = INSTALL
    Options = TensorRtOptions

    @classmethod
    def check_available(cls) -> None:
        try:
            import tensorrt  # noqa: F401
        except ImportError as exc:
            raise BackendUnavailable(f"TensorRT is not installed: {INSTALL}") from exc
        gpu_count()

    def __init__(self, artifact, device: str = "auto", **options: Any):
        super().__init__(artifact, device, **options)
        o: TensorRtOptions = self.options
        self.cuda_graph = o.cuda_graph
        self.device_id = o.device_id if o.device_id is not None else device_index(device)
        record = artifact.metadata.model.get("engine")
        if not record:
            raise ArtifactError(f"{artifact.root}: no TensorRT engine; build one with: "
                                f"{rebuild_command(artifact.root, o.precision or 'fp32')}")
        self.record = record
        built = record.get("precision", "fp32")
        if o.precision and o.precision != built:
            raise InputError(f"{ENGINE_FILE} is a {built} engine, not {o.precision}; build that one with: "
                             f"{rebuild_command(artifact.root, o.precision)}")
        self.precision = built
        wanted = o.model_file or artifact.variant(built)
        if record.get("onnx", "model.onnx") != wanted:
            placement = "graph" if o.model_file else "host"
            raise ArtifactError(f"{ENGINE_FILE} was built from {record.get('onnx')}, this run needs {wanted} "
                                f"(placement {placement}); build it with: "
                                f"{rebuild_command(artifact.root, built, placement)}")
        self.engine = self.context = self.stream = None
        self.buffers: dict[str, _Buffer] = {}
        self._graph_context = self._graph_exec = None
        self._graph_failed = False

    def open(self) -> None:
        import tensorrt as trt

        rt = cudart()
        count = gpu_count()
        if self.device_id >= count:
            raise InputError(f"TensorRT device {self.device_id}: this machine has {count} GPU(s) (0..{count - 1})")
        check_cuda(rt.cudaSetDevice(self.device_id))
        check_engine(self.artifact, self.record, trt.__version__, current_gpu(self.device_id))
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(self.artifact.path(self.record["file"]).read_bytes())
        if self.engine is None:
            raise ArtifactError(f"{self.record['file']}: TensorRT could not deserialize it; rebuild the engine")
        self.context = self.engine.create_execution_context()
        self.stream = check_cuda(rt.cudaStreamCreate())
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        if len(self.inputs) != 1:
            raise ArtifactError(f"{self.record['file']}: {len(self.inputs)} inputs, expected 1")
        self.input_name = self.inputs[0]
        self.min_shape, _, self.max_shape = (tuple(s) for s in self.engine.get_tensor_profile_shape(self.input_name, 0))
        self.context.set_input_shape(self.input_name, self.max_shape)
        for name in names:
            shape = self.max_shape if name == self.input_name else tuple(self.context.get_tensor_shape(name))
            self.buffers[name] = _Buffer(name, host_dtype(trt, name, self.engine.get_tensor_dtype(name)), shape)
            self.context.set_tensor_address(name, int(self.buffers[name].device))

    def _enqueue(self, context, n: int) -> dict[str, tuple[int, ...]]:
        """Queue H2D copy, execution on ``context`` and D2H copies for batch ``n``; returns output shapes."""
        rt = cudart()
        h2d, d2h = rt.cudaMemcpyKind.cudaMemcpyHostToDevice, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        inp = self.buffers[self.input_name]
        nbytes = n * (inp.nbytes // self.max_shape[0])
        check_cuda(rt.cudaMemcpyAsync(inp.device, inp.host_ptr, nbytes, h2d, self.stream))
        if not context.execute_async_v3(int(self.stream)):
            raise BackendUnavailable("TensorRT execute_async_v3 failed (see the TensorRT log)")
        shapes = {}
        for name in self.outputs:
            shape = tuple(context.get_tensor_shape(name))
            out = self.buffers[name]
            check_cuda(rt.cudaMemcpyAsync(out.host_ptr, out.device, int(np.prod(shape)) * out.dtype.itemsize, d2h,
                                          self.stream))
            shapes[name] = shape
        return shapes

    def _capture_batch1(self) -> bool:
        """Capture batch 1 on a dedicated context into ``_graph_exec``; False (capture ended) on failure."""
        rt = cudart()
        context = self.engine.create_execution_context()
        context.set_input_shape(self.input_name, (1, *self.max_shape[1:]))
        for name, buffer in self.buffers.items():
            context.set_tensor_address(name, int(buffer.device))
        self._enqueue(context, 1)  # the enqueue that flushes TensorRT's deferred work for this shape
        check_cuda(rt.cudaStreamSynchronize(self.stream))
        check_cuda(rt.cudaStreamBeginCapture(self.stream, rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal))
        try:
            shapes = self._enqueue(context, 1)
        except (BackendUnavailable, RuntimeError) as exc:
            _, partial = rt.cudaStreamEndCapture(self.stream)  # leave capture mode, drop what was captured
            if partial is not None and int(partial):
                rt.cudaGraphDestroy(partial)
            warnings.warn(f"CUDA graph capture failed ({exc}); batch 1 runs without a graph", stacklevel=3)
            return False
        graph = check_cuda(rt.cudaStreamEndCapture(self.stream))
        try:
            self._graph_exec = check_cuda(rt.cudaGraphInstantiate(graph, 0))
        except BackendUnavailable as exc:
            warnings.warn(f"CUDA graph instantiation failed ({exc}); batch 1 runs without a graph", stacklevel=3)
            return False
        finally:
            rt.cudaGraphDestroy(graph)
        self._graph_context, self._graph_shapes = context, shapes
        return True

    def _infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if self.engine is None:
            self.open()
        rt = cudart()
        n = batch.shape[0]
        if not self.min_shape[0] <= n <= self.max_shape[0]:
            raise InputError(f"batch of {n}: this engine's profile allows {self.min_shape[0]}..{self.max_shape[0]}; "
                             "rebuild with a larger --batch or split the batch")
        host_dtype = self.buffers[self.input_name].dtype
        self.buffers[self.input_name].view(batch.shape)[...] = batch.astype(host_dtype, copy=False)
        if self.cuda_graph and n == 1 and not self._graph_failed:
            if self._graph_exec is None and not self._capture_batch1():
                self._graph_failed = True
        if self._graph_exec is not None and n == 1:
            check_cuda(rt.cudaGraphLaunch(self._graph_exec, self.stream))
            shapes = self._graph_shapes
        else:
            self.context.set_input_shape(self.input_name, batch.shape)
            shapes = self._enqueue(self.context, n)
        check_cuda(rt.cudaStreamSynchronize(self.stream))
        return {name: self.buffers[name].view(shape).astype(np.float32, copy=True) for name, shape in shapes.items()}

    def close(self) -> None:
        if self.engine is None:
            return
        rt = cudart()
        if self._graph_exec is not None:
            rt.cudaGraphExecDestroy(self._graph_exec)
            self._graph_exec = self._graph_context = None
        for buffer in self.buffers.values():
            buffer.free()
        self.buffers.clear()
        rt.cudaStreamDestroy(self.stream)
        self.context = self.engine = self.stream = None


BACKEND = TensorRtBackend
