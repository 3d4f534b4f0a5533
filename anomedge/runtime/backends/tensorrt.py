"""TensorRT backend: the artifact's ``model.engine`` with cuda-python buffers (no torch, no pycuda).

``open()`` checks the plan against this machine (ONNX hash, TensorRT version, GPU; see
``export.tensorrt.check_engine``), deserializes it, and allocates once, for the profile's max batch:
a device buffer and a pinned host buffer per I/O tensor, one stream; tensor addresses are bound
once. ``_infer`` sets the input shape (dynamic batch), copies H2D, ``execute_async_v3``, copies D2H,
synchronises. ``cuda_graph=True`` captures the batch-1 sequence into a CUDA graph on first use and
replays it (fewer launch overheads for the per-frame case).
"""

from __future__ import annotations

import ctypes
import shlex
from typing import Any

import numpy as np

from ...errors import ArtifactError, BackendUnavailable, InputError
from .base import Backend

ENGINE_FILE = "model.engine"

INSTALL = ("pip install 'anomedge[tensorrt]'  (tensorrt from NVIDIA's index: "
           "pip install tensorrt cuda-python --extra-index-url https://pypi.nvidia.com)")


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


def check_cuda(result: tuple) -> Any:
    """cuda-python calls return (error, *values): raise on error, return the value(s)."""
    rt = cudart()
    err, values = result[0], result[1:]
    if err != rt.cudaError_t.cudaSuccess:
        raise BackendUnavailable(f"CUDA call failed: {rt.cudaGetErrorName(err)[1].decode()}")
    return values[0] if len(values) == 1 else (values or None)


def rebuild_command(artifact_root, precision: str) -> str:
    return f"python -m anomedge.export.tensorrt {shlex.quote(str(artifact_root))} --precision {precision}"


def current_gpu(device: int = 0) -> dict[str, str]:
    """{'name', 'compute_capability'} of CUDA device ``device`` (cuda-python runtime API)."""
    rt = cudart()
    props = check_cuda(rt.cudaGetDeviceProperties(device))
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return {"name": name.rstrip("\x00"), "compute_capability": f"{props.major}.{props.minor}"}


def check_engine(artifact, record: dict[str, Any], tensorrt_version: str, gpu: dict[str, str]) -> None:
    """Raise ArtifactError if the plan in ``record`` was built from another ONNX, TensorRT or GPU."""
    fix = f"; rebuild it on this machine: {rebuild_command(artifact.root, record.get('precision', 'fp32'))}"
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


class TensorRtBackend(Backend):
    name = "tensorrt"
    install_hint = INSTALL

    @classmethod
    def check_available(cls) -> None:
        try:
            import tensorrt  # noqa: F401
        except ImportError as exc:
            raise BackendUnavailable(f"TensorRT is not installed: {INSTALL}") from exc
        rt = cudart()
        err, count = rt.cudaGetDeviceCount()
        if err != rt.cudaError_t.cudaSuccess or count < 1:
            raise BackendUnavailable("TensorRT needs an NVIDIA GPU: none found (check the driver, or docker --gpus all)")

    def __init__(self, artifact, device: str = "auto", cuda_graph: bool = False, device_id: int = 0,
                 **options: Any):
        super().__init__(artifact, device, **options)
        self.cuda_graph = cuda_graph
        self.device_id = 0 if device in ("auto", "cuda", "gpu") else int(str(device).replace("cuda:", ""))
        self.device_id = device_id or self.device_id
        record = artifact.metadata.model.get("engine")
        if not record:
            raise ArtifactError(f"{artifact.root}: no TensorRT engine; build one with: "
                                f"python -m anomedge.export.tensorrt {artifact.root}")
        self.record = record
        self.precision = record.get("precision", "fp32")
        self.engine = self.context = self.stream = None
        self.buffers: dict[str, _Buffer] = {}
        self._graph_exec = None

    def open(self) -> None:
        import tensorrt as trt

        rt = cudart()
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
            self.buffers[name] = _Buffer(name, trt.nptype(self.engine.get_tensor_dtype(name)), shape)
            self.context.set_tensor_address(name, int(self.buffers[name].device))

    def _enqueue(self, n: int) -> dict[str, tuple[int, ...]]:
        """Queue H2D copy, execution and D2H copies for batch ``n`` on the stream; returns output shapes."""
        rt = cudart()
        h2d, d2h = rt.cudaMemcpyKind.cudaMemcpyHostToDevice, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        inp = self.buffers[self.input_name]
        nbytes = n * (inp.nbytes // self.max_shape[0])
        check_cuda(rt.cudaMemcpyAsync(inp.device, inp.host_ptr, nbytes, h2d, self.stream))
        if not self.context.execute_async_v3(int(self.stream)):
            raise BackendUnavailable("TensorRT execute_async_v3 failed (see the TensorRT log)")
        shapes = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            out = self.buffers[name]
            check_cuda(rt.cudaMemcpyAsync(out.host_ptr, out.device, int(np.prod(shape)) * out.dtype.itemsize, d2h,
                                          self.stream))
            shapes[name] = shape
        return shapes

    def _capture_batch1(self) -> None:
        rt = cudart()
        self._enqueue(1)  # TensorRT needs one enqueue after a shape change before capture
        check_cuda(rt.cudaStreamSynchronize(self.stream))
        check_cuda(rt.cudaStreamBeginCapture(self.stream, rt.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal))
        self._graph_shapes = self._enqueue(1)
        graph = check_cuda(rt.cudaStreamEndCapture(self.stream))
        self._graph_exec = check_cuda(rt.cudaGraphInstantiate(graph, 0))
        check_cuda(rt.cudaGraphDestroy(graph))

    def _infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if self.engine is None:
            self.open()
        rt = cudart()
        n = batch.shape[0]
        if not self.min_shape[0] <= n <= self.max_shape[0]:
            raise InputError(f"batch of {n}: this engine's profile allows {self.min_shape[0]}..{self.max_shape[0]}; "
                             "rebuild with a larger --batch or split the batch")
        host_dtype = self.buffers[self.input_name].dtype
        self.context.set_input_shape(self.input_name, batch.shape)
        self.buffers[self.input_name].view(batch.shape)[...] = batch.astype(host_dtype, copy=False)
        if self.cuda_graph and n == 1:
            if self._graph_exec is None:
                self._capture_batch1()
            check_cuda(rt.cudaGraphLaunch(self._graph_exec, self.stream))
            shapes = self._graph_shapes
        else:
            shapes = self._enqueue(n)
        check_cuda(rt.cudaStreamSynchronize(self.stream))
        return {name: self.buffers[name].view(shape).astype(np.float32, copy=True) for name, shape in shapes.items()}

    def close(self) -> None:
        if self.engine is None:
            return
        rt = cudart()
        if self._graph_exec is not None:
            rt.cudaGraphExecDestroy(self._graph_exec)
            self._graph_exec = None
        for buffer in self.buffers.values():
            buffer.free()
        self.buffers.clear()
        rt.cudaStreamDestroy(self.stream)
        self.context = self.engine = self.stream = None


BACKEND = TensorRtBackend
