"""Read an ONNX file's declared graph inputs and outputs without ``onnx`` or an inference session.

Why a reader of the protobuf wire format (≈ 80 lines) rather than ``onnxruntime.InferenceSession``:
a session optimises the whole graph (seconds and a copy of the weights for a ViT) only to be thrown
away, the backend builds its own with the user's providers, and a session on a hostile file is the
very thing the load check should come before. The reader touches only the fields it needs
(ModelProto.graph → GraphProto.input/output/initializer → ValueInfoProto name and tensor shape)
and skips every other field by its length, over an mmap: weights are never copied.

It also refuses initializers whose data lives in an external file (``data_location = EXTERNAL``):
an artifact's graphs are self-contained, and an external path is a file outside the hash list.
Field numbers: onnx/onnx.proto (ModelProto.graph = 7; GraphProto.initializer = 5, input = 11,
output = 12; ValueInfoProto.name = 1, type = 2; TypeProto.tensor_type = 1; Tensor.elem_type = 1,
shape = 2; TensorShapeProto.dim = 1; Dimension.dim_value = 1, dim_param = 2; TensorProto.name = 8,
data_location = 14).
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass
from pathlib import Path

from ..errors import ArtifactError

Dim = int | str | None  # a fixed size, a symbolic name ("N", "batch"), or unknown


@dataclass(frozen=True)
class GraphIO:
    """Declared graph inputs / outputs: name → (element type, dims); initializers are not inputs."""

    inputs: dict[str, tuple[int, tuple[Dim, ...]]]
    outputs: dict[str, tuple[int, tuple[Dim, ...]]]


class _Malformed(Exception):
    pass


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Malformed("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf, start: int, end: int):
    """Yield (field number, wire type, value or (start, end) of a length-delimited payload)."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield number, wire, value
            continue
        size = {1: 8, 5: 4}.get(wire)
        if wire == 2:
            size, pos = _varint(buf, pos, end)
        elif size is None:
            raise _Malformed(f"wire type {wire}")
        if pos + size > end:
            raise _Malformed("field runs past its end")
        yield number, wire, (pos, pos + size)
        pos += size


def _sub(buf, span, number: int) -> list[tuple[int, int]]:
    return [v for n, w, v in _fields(buf, *span) if n == number and w == 2]


def _text(buf, span) -> str:
    return bytes(buf[span[0]:span[1]]).decode("utf-8", "replace")


def _value_info(buf, span) -> tuple[str, tuple[int, tuple[Dim, ...]]]:
    name, elem, dims = "", 0, ()
    for number, wire, value in _fields(buf, *span):
        if number == 1 and wire == 2:
            name = _text(buf, value)
        elif number == 2 and wire == 2:
            for tensor in _sub(buf, value, 1):
                for n, w, v in _fields(buf, *tensor):
                    if n == 1 and w == 0:
                        elem = v
                    elif n == 2 and w == 2:
                        dims = tuple(_dim(buf, d) for d in _sub(buf, v, 1))
    return name, (elem, dims)


def _dim(buf, span) -> Dim:
    for number, wire, value in _fields(buf, *span):
        if number == 1 and wire == 0:
            return value - (1 << 64) if value >= 1 << 63 else value
        if number == 2 and wire == 2:
            return _text(buf, value)
    return None


def read_graph_io(path: str | Path) -> GraphIO:
    """Declared inputs/outputs of the ONNX file at ``path``; ArtifactError (one line) if it is not one."""
    path = Path(path)
    try:
        with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _parse(buf, len(buf))
    except _Malformed as exc:
        raise ArtifactError(f"{path}: not a valid ONNX model ({exc}); copy the file again or re-export") from None
    except (OSError, ValueError) as exc:  # ValueError: mmap of an empty file
        raise ArtifactError(f"{path}: cannot read as an ONNX model ({exc}); copy the file again or re-export") from None


def _parse(buf, size: int) -> GraphIO:
    graphs = [v for n, w, v in _fields(buf, 0, size) if n == 7 and w == 2]
    if len(graphs) != 1:
        raise _Malformed(f"{len(graphs)} graphs, expected 1")
    inputs, outputs, initializers = {}, {}, set()
    for number, wire, value in _fields(buf, *graphs[0]):
        if wire != 2:
            continue
        if number == 11:
            name, info = _value_info(buf, value)
            inputs[name] = info
        elif number == 12:
            name, info = _value_info(buf, value)
            outputs[name] = info
        elif number == 5:
            name, external = "", False
            for n, w, v in _fields(buf, *value):
                if n == 8 and w == 2:
                    name = _text(buf, v)
                elif n == 14 and w == 0:
                    external = v == 1
            if external:
                raise _Malformed(f"initializer '{name}' keeps its data in an external file; "
                                 "artifact graphs must be self-contained")
            initializers.add(name)
    if not inputs or not outputs:
        raise _Malformed("the graph declares no inputs or no outputs")
    return GraphIO({k: v for k, v in inputs.items() if k not in initializers}, outputs)
