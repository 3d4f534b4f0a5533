"""Placement ``graph``: the kNN / Mahalanobis scoring as a small ONNX head, optionally merged with the backbone.

The head takes ``features`` (N,D,h,w) float32 and outputs ``patch_scores`` (N,h,w) float32 (the same
numbers as the host heads in ``runtime.heads``) and, with ``with_map``, ``anomaly_map`` (N,H,W):
bilinear upsample (half-pixel centres, as cv2/torch) and a separable Gaussian blur with reflect-101
borders, as ``runtime.postprocess.anomaly_maps``.

- kNN: the bank is stored as chunks ``−2·mᵀ`` (D,c) plus ``‖m‖²`` (1,c) initializers; each chunk
  gives ``‖m‖² − 2q·m`` (P,c), never (P,M). The chunk width c is chosen so that no tensor holds
  more than ``max_elements`` (< 2³¹) at the largest batch ``max_batch``. k=1: ReduceMin + ArgMin per
  chunk, the winner across chunks, then the exact ``‖q − m‖`` of the winning row (Gather), as the
  host kernel's refinement (no cancellation on near-duplicates). k>1: TopK per chunk and across
  chunks, + ‖q‖², clamp, sqrt, mean.
- Mahalanobis: ``‖Lᵀ(x − μ)‖`` per position as one batched MatMul over positions (P,N,C)@(P,C,C),
  split over positions so that no factor chunk exceeds ``max_elements``.

``build_head(artifact)`` builds from the artifact's arrays and metadata; ``merge_with_backbone``
joins it to ``model.onnx`` with onnx.compose (one graph, no host round-trip);
``add_graph_placement(dir)`` writes ``model.graph.onnx`` into the artifact and records it;
``graph_view(artifact)`` is the artifact seen with scoring kind ``graph`` (the pass-through head).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from ..artifact import METADATA, Artifact, sha256_file, write_metadata
from ..errors import ArtifactError, InputError
from ..runtime.heads import graph_view  # noqa: F401  (re-exported: the runtime owns it)

OPSET = 18
IR_VERSION = 9
MAX_ELEMENTS = 2**31 - 1
DEFAULT_CHUNK = 4096
GRAPH_FILE = "model.graph.onnx"
PREFIX = "anomedge_head/"  # every head tensor/node name, so merging with any backbone cannot collide


def chunk_width(bank_rows: int, patches_per_image: int, max_batch: int, max_elements: int = MAX_ELEMENTS,
                preferred: int = DEFAULT_CHUNK) -> int:
    """Bank rows per chunk so that the (max_batch·h·w, c) block stays ≤ ``max_elements``."""
    limit = max_elements // max(1, max_batch * patches_per_image)
    if limit < 1:
        raise InputError(f"batch {max_batch} × {patches_per_image} patches exceeds {max_elements} elements per "
                         "bank row; lower max_batch")
    return int(max(1, min(bank_rows, preferred, limit)))


def gaussian_taps(sigma: float) -> np.ndarray:
    """The blur taps of ``runtime.postprocess`` (odd support ±4σ), float32, summing to 1."""
    from ..runtime.postprocess import kernel_size

    size = kernel_size(sigma)
    x = np.arange(size, dtype=np.float64) - size // 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return (g / g.sum()).astype(np.float32)


class _Graph:
    """A tiny builder: named nodes and initializers under ``PREFIX``."""

    def __init__(self):
        self.nodes, self.inits, self.count = [], [], 0

    def const(self, name: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        full = PREFIX + name
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), full))
        return full

    def op(self, op_type: str, inputs: list[str], outputs: int | list[str] = 1, **attrs) -> list[str]:
        from onnx import helper

        self.count += 1
        names = outputs if isinstance(outputs, list) else [f"{PREFIX}{op_type}_{self.count}_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, name=f"{PREFIX}{op_type}_{self.count}", **attrs))
        return names

    def one(self, op_type: str, inputs: list[str], **attrs) -> str:
        return self.op(op_type, inputs, 1, **attrs)[0]


def _knn(g: _Graph, q: str, bank: np.ndarray, k: int, chunk: int, refine: bool) -> str:
    """(P,D) queries → (P,) distances (k=1) or mean of the k nearest."""
    m, d = bank.shape
    bank = bank.astype(np.float32)
    axis1 = g.const("axis1", np.array([1], np.int64))
    values, winners = [], []
    for i, start in enumerate(range(0, m, chunk)):
        block = bank[start:start + chunk]
        w = g.const(f"bank_t{i}", (-2.0 * block).T.astype(np.float32))  # (D,c)
        n = g.const(f"bank_sq{i}", np.einsum("md,md->m", block, block)[None, :].astype(np.float32))  # (1,c)
        s = g.one("Add", [g.one("MatMul", [q, w]), n])  # (P,c) = ‖m‖² − 2q·m
        if k == 1:
            values.append(g.one("ReduceMin", [s, axis1], keepdims=1))
            if refine:
                local = g.one("ArgMin", [s], axis=1, keepdims=1)
                winners.append(g.one("Add", [local, g.const(f"offset{i}", np.array([start], np.int64))]))
        else:
            kk = min(k, len(block))
            values.append(g.op("TopK", [s, g.const(f"k{i}", np.array([kk], np.int64))], 2, axis=1, largest=0)[0])
    cat = values[0] if len(values) == 1 else g.one("Concat", values, axis=1)
    if k == 1 and refine:
        rows = winners[0] if len(winners) == 1 else g.one(
            "GatherElements", [g.one("Concat", winners, axis=1), g.one("ArgMin", [cat], axis=1, keepdims=1)], axis=1)
        index = g.one("Reshape", [rows, g.const("flat", np.array([-1], np.int64))])  # (P,)
        nearest = g.one("Gather", [g.const("bank", bank), index], axis=0)  # (P,D)
        d2 = g.one("ReduceSumSquare", [g.one("Sub", [nearest, q]), axis1], keepdims=0)
        return g.one("Sqrt", [d2])
    qq = g.one("ReduceSumSquare", [q, axis1], keepdims=1)  # (P,1)
    if k == 1:
        best = g.one("ReduceMin", [cat, axis1], keepdims=1)
    else:
        best = cat if len(values) == 1 else g.op("TopK", [cat, g.const("k", np.array([k], np.int64))], 2,
                                                  axis=1, largest=0)[0]
    dist = g.one("Sqrt", [g.one("Max", [g.one("Add", [best, qq]), g.const("zero", np.array(0.0, np.float32))])])  # (P,k)
    return g.one("ReduceMean", [dist, axis1], keepdims=0)


def _mahalanobis(g: _Graph, feats: str, mean: np.ndarray, factor: np.ndarray, n_pos: int, c: int,
                 max_elements: int) -> str:
    """features (N,C,h,w) → (N,P) distances ‖Lᵀ(x − μ)‖ with factor L (P,C,C)."""
    x = g.one("Transpose", [g.one("Reshape", [feats, g.const("ncp", np.array([0, c, n_pos], np.int64))])],
              perm=[2, 0, 1])  # (P,N,C)
    delta = g.one("Sub", [x, g.const("mean", mean.astype(np.float32)[:, None, :])])
    step = max(1, min(n_pos, max_elements // (c * c)))
    parts = []
    splits = [min(step, n_pos - s) for s in range(0, n_pos, step)]
    pieces = [delta] if len(splits) == 1 else g.op("Split", [delta, g.const("splits", np.array(splits, np.int64))],
                                                     len(splits), axis=0)
    for i, (start, piece) in enumerate(zip(range(0, n_pos, step), pieces)):
        lf = g.const(f"factor{i}", factor[start:start + step].astype(np.float32))
        parts.append(g.one("MatMul", [piece, lf]))  # (p,N,C)
    y = parts[0] if len(parts) == 1 else g.one("Concat", parts, axis=0)
    d2 = g.one("ReduceSumSquare", [y, g.const("axis2", np.array([2], np.int64))], keepdims=0)  # (P,N)
    return g.one("Sqrt", [g.one("Max", [g.one("Transpose", [d2], perm=[1, 0]), g.const("zero", np.array(0.0, np.float32))])])


def _anomaly_map(g: _Graph, scores: str, h: int, w: int, size: tuple[int, int], sigma: float) -> str:
    height, width = size
    x = g.one("Reshape", [scores, g.const("n1hw", np.array([-1, 1, h, w], np.int64))])
    # Full-rank scales (no ``axes``, no 2-element sizes on a dynamic batch: the ONNX-TensorRT importer's
    # form); exact only when floor(h·scale) == height, so anything else is refused, never resized off by one.
    scales = np.array([1.0, 1.0, height / h, width / w], np.float32)
    if int(np.floor(np.float32(h) * scales[2])) != height or int(np.floor(np.float32(w) * scales[3])) != width:
        raise InputError(f"anomaly map {h}×{w} → {height}×{width}: not an exact float32 scale; use an input size "
                         "that is a multiple of the feature stride")
    x = g.one("Resize", [x, "", g.const("scales", scales)], mode="linear", coordinate_transformation_mode="half_pixel")
    if sigma > 0:
        taps = gaussian_taps(sigma)
        pad = len(taps) // 2
        if pad >= min(height, width):
            raise InputError(f"blur sigma {sigma}: kernel of {len(taps)} taps needs a map larger than {height}×{width}")
        x = g.one("Pad", [x, g.const("pads", np.array([0, 0, pad, pad, 0, 0, pad, pad], np.int64))], mode="reflect")
        x = g.one("Conv", [x, g.const("blur_x", taps.reshape(1, 1, 1, -1))])
        x = g.one("Conv", [x, g.const("blur_y", taps.reshape(1, 1, -1, 1))])
    return g.one("Reshape", [x, g.const("nhw_map", np.array([-1, height, width], np.int64))], )


def build_scoring_head(kind: str, feature_shape: tuple[int, int, int], arrays: dict[str, np.ndarray], *,
                       k: int = 1, image_size: tuple[int, int] | None = None, sigma: float = 0.0,
                       chunk_rows: int | None = None, max_batch: int = 256, max_elements: int = MAX_ELEMENTS,
                       refine: bool = True, features_name: str = "features"):
    """ONNX model: ``features`` (N,D,h,w) → ``patch_scores`` (N,h,w) [+ ``anomaly_map`` (N,H,W) if image_size].

    kind 'knn' needs arrays['bank.npy'] (M,D); 'mahalanobis' needs 'mean.npy' (h·w,C), 'factor.npy' (h·w,C,C).
    """
    from onnx import TensorProto, helper

    d, h, w = feature_shape
    g = _Graph()
    if kind == "knn":
        bank = arrays["bank.npy"]
        if bank.ndim != 2 or bank.shape[1] != d or len(bank) < k:
            raise ArtifactError(f"bank {bank.shape}: expected (M,{d}) with M ≥ k={k}")
        chunk = chunk_rows or chunk_width(len(bank), h * w, max_batch, max_elements)
        if max_batch * h * w * chunk > max_elements:
            raise InputError(f"chunk of {chunk} rows × {max_batch * h * w} patches exceeds {max_elements} elements")
        q = g.one("Reshape", [g.one("Transpose", [features_name], perm=[0, 2, 3, 1]),
                              g.const("pd", np.array([-1, d], np.int64))])
        flat = _knn(g, q, bank, k, chunk, refine)
    elif kind == "mahalanobis":
        flat = _mahalanobis(g, features_name, arrays["mean.npy"], arrays["factor.npy"], h * w, d, max_elements)
    else:
        raise ArtifactError(f"scoring kind '{kind}' has no graph head (knn and mahalanobis do); use placement host")
    g.op("Reshape", [flat, g.const("nhw", np.array([-1, h, w], np.int64))], ["patch_scores"])
    outputs = [helper.make_tensor_value_info("patch_scores", TensorProto.FLOAT, ["N", h, w])]
    if image_size is not None:
        g.op("Identity", [_anomaly_map(g, "patch_scores", h, w, image_size, sigma)], ["anomaly_map"])
        outputs.append(helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, ["N", *image_size]))
    graph = helper.make_graph(g.nodes, "anomedge_scoring_head",
                              [helper.make_tensor_value_info(features_name, TensorProto.FLOAT, ["N", d, h, w])],
                              outputs, initializer=g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    return model


def build_head(artifact: Artifact, with_map: bool = True, **options):
    """The scoring head for ``artifact`` (shapes, k, blur from its metadata; arrays from its files)."""
    meta = artifact.metadata
    kind = meta.scoring.get("kind")
    feat = meta.outputs.get("features", {}).get("shape")
    if not feat or len(feat) != 4:
        raise ArtifactError(f"{artifact.root}: outputs.features.shape missing; re-export with ad-export")
    names = {"knn": ["bank.npy"], "mahalanobis": ["mean.npy", "factor.npy"]}.get(kind, [])
    size = (meta.input.height, meta.input.width) if with_map else None
    return build_scoring_head(kind, tuple(int(v) for v in feat[1:]), {n: artifact.array(n) for n in names},
                              k=int(meta.scoring.get("k", 1)), image_size=size,
                              sigma=float(meta.postprocess.get("blur_sigma", 0.0)), **options)


def merge_with_backbone(backbone, head):
    """One graph: backbone's ``features`` feeds the head; outputs are the head's."""
    from onnx import compose, helper

    head.ir_version = backbone.ir_version
    opset = {o.domain: o.version for o in backbone.opset_import}
    if opset.get("", OPSET) != OPSET:
        del head.opset_import[:]
        head.opset_import.extend([helper.make_opsetid("", opset[""])])
    merged = compose.merge_models(backbone, head, io_map=[("features", "features")],
                                  outputs=[o.name for o in head.graph.output])
    opsets = {o.domain: o.version for o in merged.opset_import}  # merge_models lists the default twice
    del merged.opset_import[:]
    merged.opset_import.extend(helper.make_opsetid(domain, version) for domain, version in opsets.items())
    return merged


def add_graph_placement(artifact_dir: str | Path, merged: bool = True, with_map: bool = False, **options) -> Path:
    """Write ``model.graph.onnx`` (backbone + head, or the head alone with ``merged=False``) into the
    artifact, hash it and record ``scoring.graph_model``. Placement stays as recorded (see ``ad-bench``)."""
    import onnx

    root = Path(artifact_dir)
    artifact = Artifact.load(root)
    head = build_head(artifact, with_map=with_map, **options)
    model = merge_with_backbone(onnx.load(str(artifact.path("model.onnx"))), head) if merged else head
    onnx.checker.check_model(model)
    dst = root / (GRAPH_FILE if merged else "head.onnx")
    onnx.save(model, str(dst))
    meta = json.loads((root / METADATA).read_text())
    meta["files"][dst.name] = sha256_file(dst)
    meta["scoring"]["graph_model" if merged else "graph_head"] = dst.name
    write_metadata(root, meta)
    return dst
