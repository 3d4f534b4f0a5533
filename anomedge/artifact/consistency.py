"""Cross-checks at load: the arrays' headers, the graphs' declared inputs / outputs and the metadata agree.

Run after the hashes (so they read the files that were exported) and before any backend opens a
session or any array is loaded. Every check reads headers only: ``.npy`` headers (folder.npy_header)
and the ONNX graph's declared inputs and outputs (onnx_io.read_graph_io).

- every ``.onnx`` listed is a parseable ONNX model with self-contained weights;
- the image graphs (``model.onnx``, each ``model.variants`` file, ``scoring.graph_model``) declare the
  input ``input.name`` as (batch, 3, input.height, input.width) where the dims are fixed;
- ``knn``: ``bank.npy`` is (bank_rows, D) float32/float16 with k ≤ rows; ``mahalanobis``: ``mean.npy``
  (P, C) and ``factor.npy`` (P, C, C); D / C equal the channels of the ``features`` output declared by
  ``model.onnx`` and by ``outputs.features.shape`` where those are fixed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ArtifactError
from .onnx_io import GraphIO, read_graph_io

if TYPE_CHECKING:
    from .folder import Artifact


def check_contents(artifact: "Artifact") -> None:
    from .folder import npy_header

    meta = artifact.metadata
    headers = {name: npy_header(artifact.root / name) for name in meta.files if name.endswith(".npy")}
    graphs = {name: read_graph_io(artifact.root / name) for name in meta.files if name.endswith(".onnx")}
    image_graphs = {"model.onnx", *meta.model.get("variants", {}).values()}
    if "graph_model" in meta.scoring:
        image_graphs.add(meta.scoring["graph_model"])
    for name in sorted(image_graphs & set(graphs)):
        _check_image_input(artifact.root / name, graphs[name], meta.input)
    width = _feature_width(artifact.root, meta, graphs.get("model.onnx"))
    kind = meta.scoring["kind"]
    if kind == "knn":
        _check_bank(artifact.root / "bank.npy", headers["bank.npy"], meta.scoring, width)
    elif kind == "mahalanobis":
        _check_gaussian(artifact.root, headers["mean.npy"], headers["factor.npy"], meta.scoring, width)
    elif kind == "ensemble":  # each member against the graph output it reads
        outputs = graphs["model.onnx"].outputs if "model.onnx" in graphs else {}
        for m in meta.scoring["members"]:
            if m["output"] not in outputs and outputs:
                raise ArtifactError(f"{artifact.root / 'model.onnx'}: no output '{m['output']}' (ensemble member "
                                    f"{m['name']}); re-export the artifact")
            dims = outputs[m["output"]][1] if outputs else ()
            width = dims[1] if len(dims) > 1 and isinstance(dims[1], int) and dims[1] > 0 else None
            p = m["prefix"]
            if m["scoring"]["kind"] == "knn":
                _check_bank(artifact.root / f"{p}bank.npy", headers[f"{p}bank.npy"], m["scoring"], width)
            else:
                _check_gaussian(artifact.root, headers[f"{p}mean.npy"], headers[f"{p}factor.npy"], m["scoring"], width)


def _check_image_input(path: Path, graph: GraphIO, spec) -> None:
    if spec.name not in graph.inputs:
        raise ArtifactError(f"{path}: declares inputs {sorted(graph.inputs)}, metadata input.name is '{spec.name}'; "
                            "re-export the artifact")
    _, dims = graph.inputs[spec.name]
    want = (None, 3, spec.height, spec.width)
    if len(dims) != 4 or any(isinstance(d, int) and w is not None and d != w for d, w in zip(dims, want)):
        raise ArtifactError(f"{path}: input '{spec.name}' is declared {list(dims)}, metadata input says "
                            f"[N, 3, {spec.height}, {spec.width}]; re-export the artifact (input.height / width "
                            "must match the graph)")


def _feature_width(root: Path, meta, graph: GraphIO | None) -> int | None:
    """Channels of the ``features`` output as declared (metadata and model.onnx must agree); None if unknown."""
    declared = meta.outputs.get("features", {}).get("shape") if isinstance(meta.outputs.get("features"), dict) else None
    width = declared[1] if isinstance(declared, list) and len(declared) > 1 and isinstance(declared[1], int) else None
    if graph is not None and "features" in graph.outputs:
        dims = graph.outputs["features"][1]
        if len(dims) > 1 and isinstance(dims[1], int) and dims[1] > 0:
            if width is not None and dims[1] != width:
                raise ArtifactError(f"{root / 'model.onnx'}: output 'features' has {dims[1]} channels, metadata "
                                    f"outputs.features.shape says {width}; re-export the artifact")
            width = dims[1]
    return width


def _check_bank(path: Path, header, scoring: dict, width: int | None) -> None:
    shape, dtype = header
    if len(shape) != 2 or str(dtype) not in ("float32", "float16") or shape[0] < 1:
        raise ArtifactError(f"{path}: {list(shape)} {dtype}, expected a (rows, D) float32 or float16 bank; re-export")
    rows = scoring.get("bank_rows", shape[0])
    if shape[0] != rows:
        raise ArtifactError(f"{path}: {shape[0]} rows, metadata scoring.bank_rows says {rows}; re-export")
    if int(scoring.get("k", 1)) > shape[0]:
        raise ArtifactError(f"{path}: {shape[0]} rows, fewer than scoring.k = {scoring['k']}; re-export with a lower k")
    if width is not None and shape[1] != width:
        raise ArtifactError(f"{path}: bank width {shape[1]}, the graph's 'features' output has {width} channels; "
                            "the bank belongs to another model: re-export")


def _check_gaussian(root: Path, mean, factor, scoring: dict, width: int | None) -> None:
    (mshape, mdtype), (fshape, fdtype) = mean, factor
    ok = (len(mshape) == 2 and len(fshape) == 3 and fshape == (mshape[0], mshape[1], mshape[1])
          and mdtype.kind == "f" and fdtype.kind == "f")
    if not ok:
        raise ArtifactError(f"{root / 'factor.npy'}: mean {list(mshape)} {mdtype} and factor {list(fshape)} {fdtype}, "
                            "expected float (P, C) and (P, C, C); re-export")
    for key, got in (("positions", mshape[0]), ("channels", mshape[1])):
        if key in scoring and scoring[key] != got:
            raise ArtifactError(f"{root / 'mean.npy'}: {key} {got}, metadata scoring.{key} says {scoring[key]}; re-export")
    if width is not None and mshape[1] != width:
        raise ArtifactError(f"{root / 'mean.npy'}: {mshape[1]} channels, the graph's 'features' output has {width}; "
                            "the statistics belong to another model: re-export")
