"""Global baselines (pooled feature + kNN, k-means centres): bank contents, bad parameters, runtime parity."""

import numpy as np
import pytest

from anomedge.benchmark import reference_and_runtime
from anomedge.errors import InputError
from anomedge.models.baseline import GlobalKnn, GlobalKnnConfig, KMeansBaseline, KMeansConfig
from anomedge.runtime.pipeline import Inspector
from anomedge.runtime.preprocess import read_image


@pytest.fixture(scope="module")
def baseline_artifacts(tmp_path_factory, elpv_paths):
    from anomedge.export.fit import fit_and_export

    out = {}
    for name, params in {"global_knn": {"k": 3}, "kmeans": {"n_clusters": 4}}.items():
        report = fit_and_export(elpv_paths[:20], name, {"image_size": 64, **params},
                                tmp_path_factory.mktemp(name) / name, holdout=0.2, progress=False)
        out[name] = report.artifact
    return out


@pytest.mark.slow  # fits and exports a real artifact (module fixture)
def test_banks_are_training_features_or_centres(baseline_artifacts):
    knn, km = baseline_artifacts["global_knn"], baseline_artifacts["kmeans"]
    assert knn.array("bank.npy").shape == (16, 112 + 320)  # 16 fit images, stages 4 + 6 pooled
    assert km.array("bank.npy").shape == (4, 432)
    assert knn.metadata.scoring["k"] == 3 and km.metadata.scoring["k"] == 1
    assert knn.metadata.outputs["features"]["shape"] == ["N", 432, 1, 1]


@pytest.mark.slow  # fits and exports a real artifact (module fixture)
@pytest.mark.parametrize("name", ["global_knn", "kmeans"])
def test_runtime_matches_torch_reference(baseline_artifacts, elpv_paths, name):
    art = baseline_artifacts[name]
    frames = [read_image(p) for p in elpv_paths[20:32]]
    ref_scores, ref_maps, scores, maps, threshold = reference_and_runtime(art, frames)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-4)
    assert ((scores > threshold) == (ref_scores > threshold)).all()
    # one pooled feature per image: the map is that score, constant over the image
    np.testing.assert_allclose(maps, np.broadcast_to(scores[:, None, None], maps.shape), rtol=1e-5)
    np.testing.assert_allclose(maps, ref_maps, rtol=1e-4)
    assert np.ptp(scores) > 0


@pytest.mark.slow  # fits and exports a real artifact (module fixture)
def test_knn_score_is_mean_distance_to_k_nearest_training_features(baseline_artifacts, elpv_paths):
    art = baseline_artifacts["global_knn"]
    frames = [read_image(p) for p in elpv_paths[30:33]]
    with Inspector(art, "onnxruntime") as ort:
        feats = ort.stages.infer(ort.stages.preprocess(frames))["features"][:, :, 0, 0].astype(np.float64)
        scores = ort.inspect(frames).scores
    bank = art.array("bank.npy").astype(np.float64)
    d = np.sqrt(((feats[:, None, :] - bank[None]) ** 2).sum(-1))
    np.testing.assert_allclose(scores, np.sort(d, axis=1)[:, :3].mean(1), rtol=1e-4)


@pytest.mark.parametrize("cls, params, match", [
    (GlobalKnn, GlobalKnnConfig(k=0), "k 0"), (KMeansBaseline, KMeansConfig(n_clusters=0), "n_clusters"),
    (GlobalKnn, GlobalKnnConfig(bank_dtype="int8"), "bank_dtype"),
])
def test_bad_parameters_are_input_errors(cls, params, match):
    with pytest.raises(InputError, match=match):
        cls(params)


def test_too_many_clusters_or_neighbours_for_the_data(elpv_paths):
    with pytest.raises(InputError, match="n_clusters 9 > 4"):
        KMeansBaseline(KMeansConfig(image_size=32, n_clusters=9)).fit(elpv_paths[:4])
    with pytest.raises(InputError, match="k 5 > 4"):
        GlobalKnn(GlobalKnnConfig(image_size=32, k=5)).fit(elpv_paths[:4])
    with pytest.raises(InputError, match="unknown parameter"):
        KMeansBaseline.from_params({"k": 2})
