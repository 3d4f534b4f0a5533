"""The ONE chunked ONNX builder of the kNN / Mahalanobis scoring (workstation side: imports onnx).

Used at export only; the edge runs the files it writes with onnxruntime / TensorRT / OpenVINO.

- ``build_knn_search(bank, k)``: the host ``onnxruntime`` kNN kernel's graph (``knn.onnx``):
  ``queries`` (P,D) → ``idx`` (P,k) int64, the bank rows with the k smallest ‖m‖² − 2q·m; the host
  (``kernels.OnnxKnnIndex``) refines the winners' distances exactly.
- ``build_scoring_head(kind, …)``: placement ``graph``, ``features`` (N,D,h,w) → ``patch_scores``
  (N,h,w) (the same numbers as the host heads) and, with ``image_size``, ``anomaly_map`` (N,H,W):
  bilinear upsample (half-pixel centres, as cv2/torch) and a separable Gaussian blur with reflect-101
  borders, as ``scoring.postprocess.anomaly_maps``.

Both share ``_knn_search``: the bank is stored as chunks ``−2·mᵀ`` (D,c) plus ``‖m‖²`` (1,c)
initializers; each chunk gives ``‖m‖² − 2q·m`` (P,c), never (P,M), reduced per chunk (ReduceMin +
ArgMin for k=1, TopK otherwise) and again across chunks. The head then recomputes the winners'
distances exactly as ‖q − m‖ (Gather), as the host kernels do. The chunk width c keeps every tensor
under ``max_elements`` (< 2³¹) at the largest batch ``max_batch``.
Mahalanobis: ``‖Lᵀ(x − μ)‖`` per position as one batched MatMul over positions (P,N,C)@(P,C,C),
split over positions so that no factor chunk exceeds ``max_elements``.

``build_head(artifact)`` builds from an artifact's arrays and metadata (an ensemble: every member's head,
``build_ensemble_head``); ``merge_with_backbone`` joins it to ``model.onnx`` with onnx.compose (one graph,
no host round-trip). Writing these files
into an artifact is ``export.writer``'s job.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, compose, helper, numpy_helper

from ..artifact import Artifact
from ..errors import ArtifactError, InputError
from .ensemble import MemberArtifact, scores_output
from .postprocess import gaussian_taps

OPSET = 18
IR_VERSION = 9  # what onnxruntime ≥ 1.17 reads
MAX_ELEMENTS = 2**31 - 1
DEFAULT_CHUNK = 4096
PREFIX = "anomedge_head/"  # every head tensor/node name, so merging with any backbone cannot collide


def chunk_width(bank_rows: int, patches_per_image: int, max_batch: int, max_elements: int = MAX_ELEMENTS,
                preferred: int = DEFAULT_CHUNK) -> int:
    """Bank rows per chunk so that the (max_batch·h·w, c) block stays ≤ ``max_elements``."""
    limit = max_elements // max(1, max_batch * patches_per_image)
    if limit < 1:
        raise InputError(f"batch {max_batch} × {patches_per_image} patches exceeds {max_elements} elements per "
                         "bank row; lower max_batch")
    return int(max(1, min(bank_rows, preferred, limit)))


class _Graph:
    """A tiny builder: named nodes and initializers under ``prefix`` (one per ensemble member, so
    member heads joined into one graph cannot collide)."""

    def __init__(self, prefix: str = PREFIX):
        self.prefix = prefix
        self.nodes, self.inits, self.names, self.count = [], [], set(), 0

    def const(self, name: str, array: np.ndarray) -> str:
        """An initializer named ``prefix + name``; a name already defined is reused (same value by construction)."""
        full = self.prefix + name
        if full not in self.names:
            self.names.add(full)
            self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), full))
        return full

    def op(self, op_type: str, inputs: list[str], outputs: int | list[str] = 1, **attrs) -> list[str]:
        self.count += 1
        names = outputs if isinstance(outputs, list) else [f"{self.prefix}{op_type}_{self.count}_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, name=f"{self.prefix}{op_type}_{self.count}", **attrs))
        return names

    def one(self, op_type: str, inputs: list[str], **attrs) -> str:
        return self.op(op_type, inputs, 1, **attrs)[0]


def _knn_search(g: _Graph, q: str, bank: np.ndarray, k: int, chunk: int) -> tuple[str, str]:
    """(P,D) queries → ((P,k) smallest ‖m‖² − 2q·m, (P,k) int64 bank rows), chunk by chunk: never (P,M)."""
    m, d = bank.shape
    axis1 = g.const("axis1", np.array([1], np.int64))
    values, winners = [], []
    for i, start in enumerate(range(0, m, chunk)):
        block = bank[start:start + chunk]
        w = g.const(f"bank_t{i}", (-2.0 * block).T.astype(np.float32))  # (D,c)
        n = g.const(f"bank_sq{i}", np.einsum("md,md->m", block, block)[None, :].astype(np.float32))  # (1,c)
        s = g.one("Add", [g.one("MatMul", [q, w]), n])  # (P,c) = ‖m‖² − 2q·m
        if k == 1:
            values.append(g.one("ReduceMin", [s, axis1], keepdims=1))
            local = g.one("ArgMin", [s], axis=1, keepdims=1)
        else:
            kk = min(k, len(block))
            value, local = g.op("TopK", [s, g.const(f"k{i}", np.array([kk], np.int64))], 2, axis=1, largest=0)
            values.append(value)
        winners.append(local if start == 0 else g.one("Add", [local, g.const(f"offset{i}", np.array([start], np.int64))]))
    if len(values) == 1:
        return values[0], winners[0]
    cat, cands = g.one("Concat", values, axis=1), g.one("Concat", winners, axis=1)
    if k == 1:
        pos = g.one("ArgMin", [cat], axis=1, keepdims=1)
    else:
        pos = g.op("TopK", [cat, g.const("k", np.array([k], np.int64))], 2, axis=1, largest=0)[1]
    return g.one("GatherElements", [cat, pos], axis=1), g.one("GatherElements", [cands, pos], axis=1)


def _knn(g: _Graph, q: str, bank: np.ndarray, k: int, chunk: int, refine: bool) -> str:
    """(P,D) queries → (P,) mean distance to the k nearest bank rows. ``refine``: the winners'
    distances recomputed exactly as ‖q − m‖ (as the host kernels do: no cancellation on near-duplicates)."""
    bank = bank.astype(np.float32)
    best, rows = _knn_search(g, q, bank, k, chunk)
    axis1 = g.const("axis1", np.array([1], np.int64))
    if refine:
        nearest = g.one("Gather", [g.const("bank", bank), rows], axis=0)  # (P,k,D)
        delta = g.one("Sub", [nearest, g.one("Unsqueeze", [q, axis1])])
        d2 = g.one("ReduceSumSquare", [delta, g.const("axis2", np.array([2], np.int64))], keepdims=0)  # (P,k)
        dist = g.one("Sqrt", [d2])
    else:
        qq = g.one("ReduceSumSquare", [q, axis1], keepdims=1)  # (P,1)
        dist = g.one("Sqrt", [g.one("Max", [g.one("Add", [best, qq]), g.const("zero", np.array(0.0, np.float32))])])
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


def _patch_scores(g: _Graph, kind: str, feature_shape: tuple[int, int, int], arrays: dict[str, np.ndarray], *,
                  k: int, chunk_rows: int | None, max_batch: int, max_elements: int, refine: bool,
                  features_name: str, scores_name: str) -> None:
    """``features_name`` (N,D,h,w) → ``scores_name`` (N,h,w), the nodes added to ``g``."""
    d, h, w = feature_shape
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
    g.op("Reshape", [flat, g.const("nhw", np.array([-1, h, w], np.int64))], [scores_name])


def build_scoring_head(kind: str, feature_shape: tuple[int, int, int], arrays: dict[str, np.ndarray], *,
                       k: int = 1, image_size: tuple[int, int] | None = None, sigma: float = 0.0,
                       chunk_rows: int | None = None, max_batch: int = 256, max_elements: int = MAX_ELEMENTS,
                       refine: bool = True, features_name: str = "features"):
    """ONNX model: ``features`` (N,D,h,w) → ``patch_scores`` (N,h,w) [+ ``anomaly_map`` (N,H,W) if image_size].

    kind 'knn' needs arrays['bank.npy'] (M,D); 'mahalanobis' needs 'mean.npy' (h·w,C), 'factor.npy' (h·w,C,C).
    """
    d, h, w = feature_shape
    g = _Graph()
    _patch_scores(g, kind, feature_shape, arrays, k=k, chunk_rows=chunk_rows, max_batch=max_batch,
                  max_elements=max_elements, refine=refine, features_name=features_name, scores_name="patch_scores")
    outputs = [helper.make_tensor_value_info("patch_scores", TensorProto.FLOAT, ["N", h, w])]
    if image_size is not None:
        g.op("Identity", [_anomaly_map(g, "patch_scores", h, w, image_size, sigma)], ["anomaly_map"])
        outputs.append(helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, ["N", *image_size]))
    graph = helper.make_graph(g.nodes, "anomedge_scoring_head",
                              [helper.make_tensor_value_info(features_name, TensorProto.FLOAT, ["N", d, h, w])],
                              outputs, initializer=g.inits)
    return _model(graph)


def build_ensemble_head(members: list[dict], feature_shapes: list[tuple[int, int, int]],
                        arrays: list[dict[str, np.ndarray]], *, max_batch: int = 256,
                        max_elements: int = MAX_ELEMENTS, refine: bool = True):
    """ONNX model of an ensemble's member heads (``scoring.kind = ensemble``): for member i, its graph output
    ``members[i]["output"]`` (N,Dᵢ,hᵢ,wᵢ) → ``scoring.ensemble.scores_output(members[i])`` (N,hᵢ,wᵢ), the
    same numbers as its host head. The fusion (each member's reduction, map, normalisation, mean) stays on
    the host: it is a few hundred flops per frame and ``scoring.ensemble.fuse`` is its one definition."""
    inputs, outputs, nodes, inits = {}, [], [], []
    for member, shape, member_arrays in zip(members, feature_shapes, arrays):
        g = _Graph(f"{PREFIX}{member['prefix']}")
        scoring = member["scoring"]
        d, h, w = shape
        _patch_scores(g, scoring["kind"], shape, member_arrays, k=int(scoring.get("k", 1)), chunk_rows=None,
                      max_batch=max_batch, max_elements=max_elements, refine=refine,
                      features_name=member["output"], scores_name=scores_output(member))
        inputs.setdefault(member["output"], helper.make_tensor_value_info(member["output"], TensorProto.FLOAT,
                                                                          ["N", d, h, w]))
        outputs.append(helper.make_tensor_value_info(scores_output(member), TensorProto.FLOAT, ["N", h, w]))
        nodes += g.nodes
        inits += g.inits
    return _model(helper.make_graph(nodes, "anomedge_ensemble_head", list(inputs.values()), outputs, initializer=inits))


def _model(graph):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    return model


def build_knn_search(bank: np.ndarray, k: int, chunk_rows: int = DEFAULT_CHUNK):
    """``knn.onnx``: ``queries`` (P,D) float32 → ``idx`` (P,k) int64, the k nearest bank rows by
    ‖m‖² − 2q·m (ascending for k > 1); bank (M,D) float32|float16 with M ≥ k."""
    if bank.ndim != 2 or len(bank) < k or k < 1:
        raise ArtifactError(f"bank {bank.shape}: expected (M,D) with M ≥ k={k}")
    d = bank.shape[1]
    g = _Graph()
    _, rows = _knn_search(g, "queries", bank.astype(np.float32), k, chunk_rows)
    g.op("Identity", [rows], ["idx"])
    graph = helper.make_graph(g.nodes, "anomedge_knn_search",
                              [helper.make_tensor_value_info("queries", TensorProto.FLOAT, ["P", d])],
                              [helper.make_tensor_value_info("idx", TensorProto.INT64, ["P", k])], initializer=g.inits)
    return _model(graph)


_HEAD_ARRAYS = {"knn": ["bank.npy"], "mahalanobis": ["mean.npy", "factor.npy"]}
"""The artifact arrays each graph-scorable kind reads."""


def build_head(artifact: Artifact, with_map: bool = True, **options):
    """The scoring head for ``artifact`` (shapes, k, blur from its metadata; arrays from its files).
    An ensemble's head outputs its members' patch scores only (``build_ensemble_head``): ``with_map``
    does not apply to it."""
    meta = artifact.metadata
    kind = meta.scoring.get("kind")
    if kind == "ensemble":
        return _ensemble_head(artifact, with_map, **options)
    feat = meta.outputs.get("features", {}).get("shape")
    if not feat or len(feat) != 4:
        raise ArtifactError(f"{artifact.root}: outputs.features.shape missing; re-export with ad-export")
    size = (meta.input.height, meta.input.width) if with_map else None
    return build_scoring_head(kind, tuple(int(v) for v in feat[1:]),
                              {n: artifact.array(n) for n in _HEAD_ARRAYS.get(kind, [])},
                              k=int(meta.scoring.get("k", 1)), image_size=size,
                              sigma=float(meta.postprocess.get("blur_sigma", 0.0)), **options)


def _ensemble_head(artifact: Artifact, with_map: bool, **options):
    if with_map:
        raise InputError(f"{artifact.root}: an ensemble's graph head outputs its members' patch scores; the fused "
                         "anomaly map is made on the host (with_map=False)")
    members = artifact.metadata.scoring["members"]
    shapes, arrays = [], []
    for member in members:
        shape = artifact.metadata.outputs.get(member["output"], {}).get("shape")
        if not shape or len(shape) != 4:
            raise ArtifactError(f"{artifact.root}: outputs.{member['output']}.shape missing; re-export with ad-export")
        shapes.append(tuple(int(v) for v in shape[1:]))
        view = MemberArtifact.of(artifact, member)
        arrays.append({n: view.array(n) for n in _HEAD_ARRAYS.get(member["scoring"]["kind"], [])})
    return build_ensemble_head(members, shapes, arrays, **options)


def merge_with_backbone(backbone, head):
    """One graph: the backbone's outputs named like the head's inputs (``features``, or an ensemble's
    member outputs) feed the head; outputs are the head's."""
    head.ir_version = backbone.ir_version
    opset = {o.domain: o.version for o in backbone.opset_import}
    if opset.get("", OPSET) != OPSET:
        del head.opset_import[:]
        head.opset_import.extend([helper.make_opsetid("", opset[""])])
    merged = compose.merge_models(backbone, head, io_map=[(i.name, i.name) for i in head.graph.input],
                                  outputs=[o.name for o in head.graph.output])
    opsets = {o.domain: o.version for o in merged.opset_import}  # merge_models lists the default twice
    del merged.opset_import[:]
    merged.opset_import.extend(helper.make_opsetid(domain, version) for domain, version in opsets.items())
    return merged
