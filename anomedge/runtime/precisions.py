"""The one precision table: which backend runs which precision (every CLI command and backend reads it).

- ``fp32``: the exported ``model.onnx`` (every backend; the PyTorch reference runs only this).
- ``fp16`` / ``int8``: ONNX variants written by ``ad-quantize`` (``model.fp16.onnx``, the symmetric
  Q/DQ ``model.int8.onnx``); TensorRT builds its engine from the same files (strongly typed).
- ``bf16``: no file — OpenVINO's inference precision hint on CPUs that have bf16.

Torch-free and library-free: the CLI imports it to declare ``--precision`` choices.
"""

from __future__ import annotations

from ..errors import InputError

PRECISIONS: dict[str, tuple[str, ...]] = {
    "onnxruntime": ("fp32", "fp16", "int8"),
    "openvino": ("fp32", "bf16", "fp16"),
    "tensorrt": ("fp32", "fp16", "int8"),
    "torch": ("fp32",),
    "triton": ("fp32",),  # the server runs the repository's model as written (ad-triton: fp32)
}
ALL_PRECISIONS: tuple[str, ...] = tuple(dict.fromkeys(p for row in PRECISIONS.values() for p in row))
# Precisions that are ONNX files beside model.onnx (made by ad-quantize, recorded in model.variants).
VARIANT_PRECISIONS: tuple[str, ...] = ("fp16", "int8")


def check_precision(backend: str, precision: str | None) -> None:
    """InputError unless ``backend`` runs ``precision`` (None: the backend's default)."""
    if precision is None:
        return
    allowed = PRECISIONS.get(backend, ())
    if precision not in allowed:
        runs = [b for b, row in PRECISIONS.items() if precision in row]
        where = f"; {precision} runs on {', '.join(runs)}" if runs else ""
        raise InputError(f"backend {backend} does not run precision '{precision}': it runs {', '.join(allowed)}{where}")


def bench_entries() -> list[str]:
    """Every backend:precision pair but the reference's own (``ad-bench --backends all``)."""
    return [f"{name}:{p}" for name, row in PRECISIONS.items() if name not in ("torch", "triton") for p in row]
