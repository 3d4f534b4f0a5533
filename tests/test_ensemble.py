"""One-pass ensemble: the fusion rule vs each member alone, ort vs the torch reference, ad-verify, bad specs.

Tolerances: the ensemble score equals mean((sᵢ − loc)/scale) of each member run ALONE (its own exported
graph and artifact on onnxruntime) within 1e-4 absolute (scores are z-units, O(1); the two graphs run
the same float32 ops in a different ONNX program); the maps within 1e-4 too. Runtime vs PyTorch
reference: 1e-4 relative on scores, 1e-3 of the map range (ad-verify's tolerances).
"""

import json

import numpy as np
import pytest

from anomedge.artifact import Artifact
from anomedge.artifact.schema import SchemaError, check_metadata
from anomedge.errors import InputError
from anomedge.models.ensemble import Ensemble, EnsembleConfig
from anomedge.runtime.preprocess import read_image
from anomedge.scoring.ensemble import MAD_TO_SIGMA, fuse, norm_constants


def test_norm_constants_zscore_and_robust_match_numpy():
    x = np.random.default_rng(0).normal(3.0, 2.0, size=500)
    z = norm_constants(x, "zscore", "x")
    assert z == pytest.approx({"loc": x.mean(), "scale": x.std(ddof=1)}, rel=1e-12)
    r = norm_constants(x, "robust", "x")
    med = np.median(x)
    assert r == pytest.approx({"loc": med, "scale": MAD_TO_SIGMA * np.median(np.abs(x - med))}, rel=1e-12)
    with pytest.raises(InputError, match="finite, positive scale"):
        norm_constants(np.ones(10), "zscore", "x")
    with pytest.raises(InputError, match="at least 2"):
        norm_constants(np.ones(1), "zscore", "x")


def test_fuse_is_the_mean_of_normalised_scores_and_maps():
    rng = np.random.default_rng(1)
    members = [{"norm": {"score": {"loc": 2.0, "scale": 4.0}, "map": {"loc": 1.0, "scale": 0.5}}},
               {"norm": {"score": {"loc": -1.0, "scale": 0.25}, "map": {"loc": 3.0, "scale": 2.0}}}]
    s = [rng.normal(size=5), rng.normal(size=5)]
    m = [rng.normal(size=(5, 8, 8)).astype(np.float32) for _ in range(2)]
    score, fused = fuse(s, m, members)
    np.testing.assert_allclose(score, ((s[0] - 2) / 4 + (s[1] + 1) / 0.25) / 2, rtol=1e-6)
    np.testing.assert_allclose(fused, ((m[0] - 1) / 0.5 + (m[1] - 3) / 2) / 2, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("members, match", [
    ("padim", "expected a list"),
    ([], "1 to 8 members"),
    ([{"detector": "vit"}], "cannot be a member"),
    ([{"detector": "padim", "params": {"grid_pool": 0}}], r"members\[0\] \(padim\): grid_pool"),
    ([{"detector": "padim", "params": {"image_size": 64}}], "whole ensemble"),
    ([{"detector": "patchcore", "params": {"backbone": {"name": "resnet18"}}}], "only choose its"),
    ([{"detector": "patchcore", "extra": 1}], "expected a list"),
    ([{"detector": "patchcore", "params": {"nope": 1}}], "unknown parameter"),
])
def test_bad_members_spec_is_one_line_input_error(members, match):
    with pytest.raises(InputError, match=match) as info:
        Ensemble(EnsembleConfig(members=members, image_size=64), progress=False)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("params, match", [({"normalisation": "minmax"}, "normalisation"),
                                           ({"norm_fraction": 1.0}, "norm_fraction"),
                                           ({"refit": "yes"}, "refit")])
def test_bad_options_are_input_errors(params, match):
    with pytest.raises(InputError, match=match):
        Ensemble(EnsembleConfig(image_size=64, **params), progress=False)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, elpv_paths):
    """The default ensemble at 64 px fitted on 20 ELPV cells, its artifact, and each member's own artifact."""
    from anomedge.export.writer import write_detector

    root = tmp_path_factory.mktemp("ensemble")
    model = Ensemble(EnsembleConfig(image_size=64), progress=False).fit(elpv_paths[:20])
    art = write_detector(model, root / "ens", golden_images=elpv_paths[:4])
    alone = [write_detector(m, root / f"member{i}") for i, m in enumerate(model.members)]
    return model, art, alone


def test_refit_keeps_the_held_out_constants_and_fits_members_on_all_images(elpv_paths):
    """``refit``: norms = the plain fit's (measured out of sample); each member's arrays = that member
    fitted alone on all the good images' features (PaDiM mean exactly, PatchCore bank rows from all)."""
    plain = Ensemble(EnsembleConfig(image_size=64, refit=False), progress=False)
    feats = plain.features(elpv_paths[:12])
    plain.fit_features(feats)
    refit = Ensemble(EnsembleConfig(image_size=64), progress=False).fit_features(feats)  # the default
    assert refit.norms == plain.norms and (refit.n_fit, plain.n_fit) == (12, 10)
    alone = Ensemble(EnsembleConfig(image_size=64), progress=False).members
    for member, f in zip(alone, feats):
        member.fit_features(np.ascontiguousarray(f))
    for got, want in zip(refit.members, alone):
        for name, array in want.arrays().items():
            np.testing.assert_array_equal(got.arrays()[name], array, err_msg=name)
    assert not np.array_equal(refit.members[0].arrays()["mean.npy"], plain.members[0].arrays()["mean.npy"])


@pytest.mark.slow  # fits and exports three real artifacts (module fixture)
def test_score_is_the_documented_combination_of_members_run_alone(fitted, elpv_paths):
    from anomedge.runtime.pipeline import Inspector

    model, art, alone = fitted
    frames = [read_image(p) for p in elpv_paths[24:32]]
    with Inspector(art, "onnxruntime") as insp:
        got = insp.inspect(frames)
    members = art.metadata.scoring["members"]
    scores, maps = [], []
    for a in alone:
        with Inspector(a, "onnxruntime") as insp:
            r = insp.inspect(frames)
        scores.append(r.scores)
        maps.append(r.maps)
    want = np.mean([(s - m["norm"]["score"]["loc"]) / m["norm"]["score"]["scale"] for s, m in zip(scores, members)], 0)
    want_map = np.mean([(mp - m["norm"]["map"]["loc"]) / m["norm"]["map"]["scale"] for mp, m in zip(maps, members)], 0)
    np.testing.assert_allclose(got.scores, want, atol=1e-4)
    np.testing.assert_allclose(got.maps, want_map, atol=1e-4)
    assert np.ptp(got.scores) > 0.1  # the frames differ: not a constant the test would pass on anyway


@pytest.mark.slow
def test_runtime_matches_torch_reference_and_ad_verify_passes(fitted, elpv_paths):
    from anomedge.benchmark import reference_and_runtime
    from anomedge.runtime.pipeline import Inspector
    from anomedge.runtime.verify import verify_inspector

    _, art, _ = fitted
    frames = [read_image(p) for p in elpv_paths[24:32]]
    ref_s, ref_m, s, m, _ = reference_and_runtime(art, frames)
    np.testing.assert_allclose(s, ref_s, rtol=1e-4, atol=1e-5)
    assert np.abs(m - ref_m).max() <= 1e-3 * np.ptp(ref_m)
    with Inspector(art, "onnxruntime") as insp:  # ad-verify: the golden frames (torch reference) on onnxruntime
        result = verify_inspector(insp)
    assert result.status == "pass", result


@pytest.mark.slow
def test_graph_placement_matches_the_host_head_and_passes_ad_verify(fitted, elpv_paths, tmp_path):
    """model.graph.onnx = backbone + every member's head; the fusion stays on the host. Scores within
    1e-5 relative + 1e-5 absolute (z-units) of placement host with the numpy kernel; maps 1e-5 of their range."""
    import shutil

    from anomedge.export.writer import add_graph_placement
    from anomedge.runtime.pipeline import Inspector
    from anomedge.runtime.verify import verify_inspector

    _, art, _ = fitted
    root = tmp_path / "ens"
    shutil.copytree(art.root, root)
    import onnx

    outputs = [o.name for o in onnx.load(str(add_graph_placement(root))).graph.output]
    assert outputs == ["m0_patch_scores", "m1_patch_scores"]
    graph_art = Artifact.load(root)  # the new file is hashed and verified
    frames = [read_image(p) for p in elpv_paths[24:32]]
    with Inspector(graph_art, "onnxruntime", knn_kernel="numpy") as insp:
        host = insp.inspect(frames)
    with Inspector(graph_art, "onnxruntime", placement="graph") as insp:
        graph = insp.inspect(frames)
        result = verify_inspector(insp)
    np.testing.assert_allclose(graph.scores, host.scores, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(graph.maps, host.maps, rtol=0, atol=1e-5 * float(np.ptp(host.maps)))
    assert np.ptp(host.scores) > 0.1
    assert result.status == "pass" and result.placement == "graph", result

@pytest.mark.slow
def test_metadata_lists_members_hashed_and_bad_members_block_is_refused(fitted):
    _, art, _ = fitted
    meta = art.metadata
    assert meta.scoring["kind"] == "ensemble" and [m["detector"] for m in meta.scoring["members"]] == ["padim", "patchcore"]
    assert {"m0_mean.npy", "m0_factor.npy", "m1_bank.npy", "m1_knn.onnx", "model.onnx"} <= set(meta.files)
    assert "m0_stats.npy" not in meta.files  # no ad-update for ensembles: PaDiM's update statistics stay home
    assert all(m["norm"]["score"]["scale"] > 0 and m["norm"]["map"]["scale"] > 0 for m in meta.scoring["members"])
    raw = json.loads((art.root / "metadata.json").read_text())
    raw["scoring"]["members"][1]["norm"]["score"]["scale"] = 0.0
    with pytest.raises(SchemaError, match=r"members\[1\]\.norm\.score\.scale"):
        check_metadata(raw)
    raw["scoring"]["members"][1]["norm"]["score"]["scale"] = 1.0
    raw["files"].pop("m1_bank.npy")
    with pytest.raises(SchemaError, match="bank.npy"):
        check_metadata(raw)
    assert Artifact.load(art.root).metadata.scoring == meta.scoring  # the stored one still loads (hashes intact)


@pytest.mark.parametrize("param, word", [("members=[{\"detector\":\"kmeans\"}]", "cannot be a member"),
                                         ("normalisation=minmax", "normalisation")])
def test_ad_export_bad_members_is_one_line_exit_2(tmp_path, param, word):
    from click.testing import CliRunner

    from anomedge.cli.export import main

    result = CliRunner().invoke(main, ["elpv:mono", "--detector", "ensemble", "--param", param,
                                       "--out", str(tmp_path / "a")])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and word in lines[0]
