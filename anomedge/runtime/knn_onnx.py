"""The kNN search as a small ONNX graph run by onnxruntime: its own GEMM (MLAS), independent of OpenBLAS.

Same math as ``scoring.KnnIndex``: the bank, augmented as ``[mᵀ; ‖m‖²]`` (D+1, M), is split into
chunks of at most ``chunk_rows`` columns stored as initializers; each chunk gives
``[−2q, 1] @ chunk`` = ‖m‖² − 2q·m (P × chunk, never P × M), reduced with TopK(k, smallest) per
chunk; the chunk results are concatenated and reduced again, then ‖q‖² is added, clamped at 0 and
square-rooted. ``search(queries (P,D) float32, k)`` → (P,k) float32 distances, ascending.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError

OPSET = 18
IR_VERSION = 9  # what onnxruntime ≥ 1.17 reads


def build_knn_graph(bank: np.ndarray, k: int, chunk_rows: int = 4096):
    """ONNX model: input ``qa`` (P,D+1) = [−2q, 1] → output ``d2`` (P,k) = min over bank of ‖m‖²−2q·m."""
    from onnx import TensorProto, helper, numpy_helper

    bank = np.asarray(bank, np.float32)
    m, d = bank.shape
    aug = np.concatenate([bank, np.einsum("md,md->m", bank, bank)[:, None]], axis=1).T  # (D+1, M)
    nodes, inits, parts = [], [numpy_helper.from_array(np.array([k], np.int64), "k")], []
    for i, start in enumerate(range(0, m, chunk_rows)):
        block = np.ascontiguousarray(aug[:, start:start + chunk_rows])
        kk = min(k, block.shape[1])
        inits.append(numpy_helper.from_array(block, f"bank{i}"))
        if kk != k:
            inits.append(numpy_helper.from_array(np.array([kk], np.int64), f"k{i}"))
        nodes.append(helper.make_node("MatMul", ["qa", f"bank{i}"], [f"s{i}"]))
        nodes.append(helper.make_node("TopK", [f"s{i}", "k" if kk == k else f"k{i}"], [f"v{i}", f"i{i}"],
                                      axis=1, largest=0, sorted=1))
        parts.append(f"v{i}")
    if len(parts) == 1:
        nodes.append(helper.make_node("Identity", parts, ["d2"]))
    else:
        nodes.append(helper.make_node("Concat", parts, ["cat"], axis=1))
        nodes.append(helper.make_node("TopK", ["cat", "k"], ["d2", "idx"], axis=1, largest=0, sorted=1))
    graph = helper.make_graph(nodes, "knn", [helper.make_tensor_value_info("qa", TensorProto.FLOAT, ["P", d + 1])],
                              [helper.make_tensor_value_info("d2", TensorProto.FLOAT, ["P", k])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    return model


class OnnxKnnIndex:
    def __init__(self, bank: np.ndarray, k: int = 1, chunk_rows: int = 4096, threads: int | None = None):
        import onnxruntime as ort

        if bank.ndim != 2 or len(bank) < k:
            raise InputError(f"bank {bank.shape}: expected (M,D) with M ≥ k={k}")
        self.k, self.dim = k, bank.shape[1]
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        model = build_knn_graph(bank, k, chunk_rows)
        self.session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    def search(self, queries: np.ndarray, k: int = 1) -> np.ndarray:
        if k != self.k:
            raise InputError(f"this index was built for k={self.k}, asked for k={k}")
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise InputError(f"queries {queries.shape}: expected (P,{self.dim})")
        qa = np.empty((len(queries), self.dim + 1), np.float32)
        np.multiply(queries, -2.0, out=qa[:, :-1])
        qa[:, -1] = 1.0
        d2 = self.session.run(None, {"qa": qa})[0]
        d2 += np.einsum("pd,pd->p", queries, queries)[:, None]
        return np.sqrt(np.maximum(d2, 0.0, out=d2), out=d2)
