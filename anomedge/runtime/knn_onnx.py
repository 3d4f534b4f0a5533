"""The kNN search as a small ONNX graph run by onnxruntime: its own GEMM (MLAS), independent of OpenBLAS.

Same math as ``scoring.KnnIndex``: the bank, augmented as ``[mᵀ; ‖m‖²]`` (D+1, M), is split into
chunks of at most ``chunk_rows`` columns stored as initializers; each chunk gives
``[−2q, 1] @ chunk`` = ‖m‖² − 2q·m (P × chunk, never P × M), reduced with TopK(k, smallest) per
chunk; the chunk results are concatenated and reduced again. The graph returns the winners' bank
indices; their distances are then recomputed exactly on the host as ‖q − m‖ (as the numpy kernel
does), so a query equal to a bank row gives exactly 0 instead of √(rounding noise of ‖q‖²).
``search(queries (P,D) float32, k)`` → (P,k) float32 distances, ascending.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError

OPSET = 18
IR_VERSION = 9  # what onnxruntime ≥ 1.17 reads


def build_knn_graph(bank: np.ndarray, k: int, chunk_rows: int = 4096):
    """ONNX model: input ``qa`` (P,D+1) = [−2q, 1] → output ``idx`` (P,k) int64: the bank rows with the
    k smallest ‖m‖²−2q·m, ascending."""
    from onnx import TensorProto, helper, numpy_helper

    bank = np.asarray(bank, np.float32)
    m, d = bank.shape
    aug = np.concatenate([bank, np.einsum("md,md->m", bank, bank)[:, None]], axis=1).T  # (D+1, M)
    nodes, inits, values, indices = [], [numpy_helper.from_array(np.array([k], np.int64), "k")], [], []
    for i, start in enumerate(range(0, m, chunk_rows)):
        block = np.ascontiguousarray(aug[:, start:start + chunk_rows])
        kk = min(k, block.shape[1])
        inits.append(numpy_helper.from_array(block, f"bank{i}"))
        inits.append(numpy_helper.from_array(np.array(start, np.int64), f"offset{i}"))
        if kk != k:
            inits.append(numpy_helper.from_array(np.array([kk], np.int64), f"k{i}"))
        nodes.append(helper.make_node("MatMul", ["qa", f"bank{i}"], [f"s{i}"]))
        nodes.append(helper.make_node("TopK", [f"s{i}", "k" if kk == k else f"k{i}"], [f"v{i}", f"local{i}"],
                                      axis=1, largest=0, sorted=1))
        nodes.append(helper.make_node("Add", [f"local{i}", f"offset{i}"], [f"i{i}"]))
        values.append(f"v{i}")
        indices.append(f"i{i}")
    if len(values) == 1:
        nodes.append(helper.make_node("Identity", indices, ["idx"]))
    else:
        nodes.append(helper.make_node("Concat", values, ["vals"], axis=1))
        nodes.append(helper.make_node("Concat", indices, ["cands"], axis=1))
        nodes.append(helper.make_node("TopK", ["vals", "k"], ["best", "pos"], axis=1, largest=0, sorted=1))
        nodes.append(helper.make_node("GatherElements", ["cands", "pos"], ["idx"], axis=1))
    graph = helper.make_graph(nodes, "knn", [helper.make_tensor_value_info("qa", TensorProto.FLOAT, ["P", d + 1])],
                              [helper.make_tensor_value_info("idx", TensorProto.INT64, ["P", k])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    return model


class OnnxKnnIndex:
    def __init__(self, bank: np.ndarray, k: int = 1, chunk_rows: int = 4096, threads: int | None = None):
        import onnxruntime as ort

        if bank.ndim != 2 or len(bank) < k:
            raise InputError(f"bank {bank.shape}: expected (M,D) with M ≥ k={k}")
        self.k, self.dim = k, bank.shape[1]
        self.bank = np.ascontiguousarray(bank, np.float32)
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
        idx = self.session.run(None, {"qa": qa})[0]
        diff = self.bank[idx] - queries[:, None, :]  # (P,k,D): exact distances of the winners
        dist = np.sqrt(np.einsum("pkd,pkd->pk", diff, diff))
        return np.sort(dist, axis=1) if self.k > 1 else dist
