"""The ONNX scoring head (placement graph) vs the numpy fused kernels and float64 oracles.

Tolerances: kNN with exact refinement — 1e-5 relative + 1e-5 absolute (float32 GEMM vs float64);
without refinement — 1e-3 absolute on distances ~10 (cancellation of the expanded formula);
anomaly maps — 1e-4 of the map range vs scoring.postprocess (cv2 resize + blur).
"""

from __future__ import annotations

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from anomedge.artifact import Artifact
from anomedge.errors import ArtifactError, InputError
from anomedge.export.writer import add_graph_placement
from anomedge.runtime.pipeline import graph_file
from anomedge.scoring.ensemble import EnsembleGraphHead
from anomedge.scoring.graph import build_ensemble_head, build_scoring_head, chunk_width
from anomedge.scoring.heads import PassThroughHead
from anomedge.scoring.postprocess import anomaly_maps


def _run(model, feats):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"features": feats})


def _knn_oracle(feats, bank, k):
    n, d, h, w = feats.shape
    q = feats.transpose(0, 2, 3, 1).reshape(-1, d).astype(np.float64)
    dist = np.sqrt(((q[:, None, :] - bank[None].astype(np.float64)) ** 2).sum(-1))
    return np.sort(dist, axis=1)[:, :k].mean(axis=1).reshape(n, h, w)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(203, 24)).astype(np.float32)
    feats = rng.normal(size=(2, 24, 5, 6)).astype(np.float32)
    feats[0, :, 0, 0] = bank[117]  # an exact duplicate of a bank row: distance must be 0
    return bank, feats


@pytest.mark.parametrize("chunk", [7, 64, 1000])
def test_knn_k1_matches_oracle_and_fused_kernel(data, chunk):
    from anomedge.scoring.kernels import KnnIndex

    bank, feats = data
    (scores,) = _run(build_scoring_head("knn", (24, 5, 6), {"bank.npy": bank}, chunk_rows=chunk), feats)
    assert scores.shape == (2, 5, 6) and scores.dtype == np.float32
    np.testing.assert_allclose(scores, _knn_oracle(feats, bank, 1), rtol=1e-5, atol=1e-5)
    fused = KnnIndex(bank).search(np.ascontiguousarray(feats.transpose(0, 2, 3, 1).reshape(-1, 24)), 1)
    np.testing.assert_allclose(scores.reshape(-1), fused[:, 0], rtol=1e-5, atol=1e-5)
    assert scores[0, 0, 0] == 0.0


@pytest.mark.parametrize("chunk", [5, 300])
def test_knn_k3_and_unrefined(data, chunk):
    bank, feats = data
    (k3,) = _run(build_scoring_head("knn", (24, 5, 6), {"bank.npy": bank}, k=3, chunk_rows=chunk), feats)
    np.testing.assert_allclose(k3, _knn_oracle(feats, bank, 3), rtol=1e-5, atol=1e-5)  # refined exactly, as k=1
    (raw,) = _run(build_scoring_head("knn", (24, 5, 6), {"bank.npy": bank}, chunk_rows=chunk, refine=False), feats)
    np.testing.assert_allclose(raw, _knn_oracle(feats, bank, 1), rtol=0, atol=1e-3)


def test_chunks_respect_the_element_limit(data):
    bank, feats = data
    # 30 patches/image × batch 4 = 120 rows: a 1000-element cap allows 8 bank rows per chunk.
    assert chunk_width(len(bank), 30, 4, max_elements=1000) == 8
    model = build_scoring_head("knn", (24, 5, 6), {"bank.npy": bank}, max_batch=4, max_elements=1000)
    matmuls = [i for i in model.graph.initializer if i.name.split("/")[-1].startswith("bank_t")]
    assert len(matmuls) == -(-len(bank) // 8) and all(i.dims[1] <= 8 for i in matmuls)
    np.testing.assert_allclose(_run(model, feats)[0], _knn_oracle(feats, bank, 1), rtol=1e-5, atol=1e-5)
    with pytest.raises(InputError, match="lower max_batch"):
        chunk_width(len(bank), 30, 4, max_elements=100)
    with pytest.raises(InputError, match="exceeds"):
        build_scoring_head("knn", (24, 5, 6), {"bank.npy": bank}, chunk_rows=50, max_batch=4, max_elements=1000)


@pytest.mark.parametrize("max_elements", [10**9, 16 * 16 * 3])  # the second splits positions into chunks of 3
def test_mahalanobis_matches_oracle(max_elements):
    from anomedge.scoring.kernels import MahalanobisIndex, inverse_cov_factor

    rng = np.random.default_rng(1)
    c, h, w, n = 16, 4, 5, 3
    a = rng.normal(size=(h * w, c, c))
    cov = a @ a.transpose(0, 2, 1) / c + 0.1 * np.eye(c)
    mean = rng.normal(size=(h * w, c)).astype(np.float32)
    factor = inverse_cov_factor(cov)
    feats = rng.normal(size=(n, c, h, w)).astype(np.float32)
    model = build_scoring_head("mahalanobis", (c, h, w), {"mean.npy": mean, "factor.npy": factor},
                               max_elements=max_elements)
    (scores,) = _run(model, feats)
    x = feats.reshape(n, c, h * w).transpose(0, 2, 1).astype(np.float64) - mean
    oracle = np.sqrt(np.einsum("npc,pcd,npd->np", x, np.linalg.inv(cov), x)).reshape(n, h, w)
    np.testing.assert_allclose(scores, oracle, rtol=1e-4)
    raw = np.ascontiguousarray(feats.reshape(n, c, h * w).transpose(0, 2, 1))
    fused = np.sqrt(MahalanobisIndex(mean, factor).score(raw)).reshape(n, h, w)
    np.testing.assert_allclose(scores, fused, rtol=1e-5)


@pytest.mark.parametrize("sigma", [0.0, 1.5, 4.0])
def test_anomaly_map_matches_host_postprocess(data, sigma):
    bank, feats = data
    model = build_scoring_head("knn", (24, 5, 6), {"bank.npy": bank}, image_size=(40, 48), sigma=sigma)
    scores, maps = _run(model, feats)
    assert maps.shape == (2, 40, 48)
    host = anomaly_maps(scores, (40, 48), sigma)
    np.testing.assert_allclose(maps, host, rtol=0, atol=1e-4 * float(np.ptp(host)))


def test_unsupported_kind_and_graph_head_errors(tiny_artifact):
    with pytest.raises(ArtifactError, match="no graph head"):
        build_scoring_head("reconstruction", (1, 4, 4), {})
    with pytest.raises(ArtifactError, match="no graph placement"):
        graph_file(tiny_artifact, "graph")
    with pytest.raises(ArtifactError, match="patch_scores"):
        PassThroughHead()({"features": np.zeros((1, 2, 2, 2), np.float32)})



def test_ensemble_head_outputs_each_members_scores_as_its_own_head(data):
    """Two members over different graph outputs (kNN on (24,5,6), Mahalanobis on (16,4,5)) and a third
    reading the first one's output again: each output equals that member's single head's (same ops,
    own name scope), and a shared input is declared once."""
    from anomedge.scoring.kernels import inverse_cov_factor

    bank, feats = data
    rng = np.random.default_rng(2)
    a = rng.normal(size=(20, 16, 16))
    arrays_m = {"mean.npy": rng.normal(size=(20, 16)).astype(np.float32),
                "factor.npy": inverse_cov_factor(a @ a.transpose(0, 2, 1) / 16 + 0.1 * np.eye(16))}
    other = rng.normal(size=(2, 16, 4, 5)).astype(np.float32)
    members = [{"prefix": "m0_", "output": "m0_features", "scoring": {"kind": "knn", "k": 1}},
               {"prefix": "m1_", "output": "m1_features", "scoring": {"kind": "mahalanobis"}},
               {"prefix": "m2_", "output": "m0_features", "scoring": {"kind": "knn", "k": 3}}]
    model = build_ensemble_head(members, [(24, 5, 6), (16, 4, 5), (24, 5, 6)], [{"bank.npy": bank}, arrays_m,
                                                                                {"bank.npy": bank[:50]}])
    assert [i.name for i in model.graph.input] == ["m0_features", "m1_features"]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in session.get_outputs()],
                   session.run(None, {"m0_features": feats, "m1_features": other})))
    assert sorted(got) == ["m0_patch_scores", "m1_patch_scores", "m2_patch_scores"]
    np.testing.assert_allclose(got["m0_patch_scores"], _run(build_scoring_head("knn", (24, 5, 6), {"bank.npy": bank}),
                                                            feats)[0], rtol=1e-6)
    np.testing.assert_allclose(got["m0_patch_scores"], _knn_oracle(feats, bank, 1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["m2_patch_scores"], _knn_oracle(feats, bank[:50], 3), rtol=1e-5, atol=1e-5)
    (alone,) = _run(build_scoring_head("mahalanobis", (16, 4, 5), arrays_m), other)
    np.testing.assert_allclose(got["m1_patch_scores"], alone, rtol=1e-6)
    assert got["m1_patch_scores"].shape == (2, 4, 5) and np.ptp(alone) > 0


def test_ensemble_graph_head_names_the_missing_member_output():
    class Art:
        class metadata:
            scoring = {"members": [{"prefix": "m0_"}, {"prefix": "m1_"}]}

            class input:
                height = width = 8

    head = EnsembleGraphHead(Art)
    scores = np.zeros((1, 2, 2), np.float32)
    assert head({"m0_patch_scores": scores, "m1_patch_scores": scores + 1})[1][0, 0, 0] == 1
    with pytest.raises(ArtifactError, match="expected m1_patch_scores; run model.graph.onnx"):
        head({"m0_patch_scores": scores, "m0_features": scores})

@pytest.mark.slow
def test_merged_graph_matches_host_placement(tiny_artifact, elpv_paths, tmp_path):
    import shutil

    from anomedge.runtime.pipeline import Inspector

    root = tmp_path / "artifact"
    shutil.copytree(tiny_artifact.root, root)
    path = add_graph_placement(root)
    artifact = Artifact.load(root)  # the new file is hashed and verified
    assert artifact.has(path.name) and artifact.metadata.scoring["graph_model"] == "model.graph.onnx"
    frames = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in elpv_paths[20:28]]

    def scores(art, **options):
        with Inspector(art, "onnxruntime", threads=2, **options) as inspector:
            results = [inspector.inspect([f]) for f in frames]
        return np.concatenate([r.scores for r in results]), np.concatenate([r.maps for r in results])

    host_scores, host_maps = scores(artifact, knn_kernel="numpy")
    graph_scores, graph_maps = scores(artifact, placement="graph")
    np.testing.assert_allclose(graph_scores, host_scores, rtol=1e-5)
    np.testing.assert_allclose(graph_maps, host_maps, rtol=0, atol=1e-5 * float(np.ptp(host_maps)))
