"""ad-update: exact PaDiM merges, the PatchCore greedy continuation, the new artifact folder, bad inputs.

Tolerances: the float64 statistics merge vs a one-pass computation on the union: 1e-10 relative (float64
rounding of two summation orders); the covariance from statistics vs ``padim.ledoit_wolf``: 1e-10; PaDiM
update vs refit, mean / factor: 1e-5 relative to the array's largest entry (float32 storage; the features
themselves are identical, batch for batch); scores through the runtime: 1e-5 relative.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from anomedge.artifact import Artifact, write_metadata
from anomedge.errors import ArtifactError, InputError
from anomedge.models import gaussian_stats as gs
from anomedge.models.coreset_extend import FarPatches, coverage_radius, extend
from anomedge.models.padim import Padim, PadimConfig, gaussian_arrays, ledoit_wolf
from anomedge.runtime.imageio import read_image
from anomedge.runtime.pipeline import Inspector
from anomedge.update.apply import update_artifact

RNG = np.random.default_rng(0)


def _samples(p=5, n=30, c=6, shift=3.0):
    return RNG.standard_normal((p, n, c)) * RNG.uniform(0.5, 2.0, c) + shift


def _close(a: gs.GaussianStats, b: gs.GaussianStats, rtol=1e-10):
    assert a.count == b.count
    for key in ("mean", "m2", "t", "q"):
        x, y = getattr(a, key), getattr(b, key)
        np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * np.abs(y).max(), err_msg=key)


# --- the statistics (numpy, exact) -------------------------------------------------------------------------

def test_combine_equals_the_statistics_of_the_union_in_any_split():
    x = _samples()
    whole = gs.from_samples(x)
    for cuts in ([1], [10, 11], [3, 17, 29]):
        parts = np.split(x, cuts, axis=1)
        merged = gs.from_samples(parts[0])
        for part in parts[1:]:
            merged = gs.combine(merged, gs.from_samples(part))
        _close(merged, whole)
    # order does not matter either
    a, b = gs.from_samples(x[:, :12]), gs.from_samples(x[:, 12:])
    _close(gs.combine(b, a), whole)


def test_moments_match_their_definition():
    x = _samples(p=2, n=7, c=3)
    s = gs.from_samples(x)
    xc = x - x.mean(1, keepdims=True)
    sq = (xc ** 2).sum(2)
    np.testing.assert_allclose(s.m2, np.einsum("pnc,pnd->pcd", xc, xc), rtol=1e-12)
    np.testing.assert_allclose(s.t, (sq[:, :, None] * xc).sum(1), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(s.q, (sq ** 2).sum(1), rtol=1e-12)


@pytest.mark.parametrize("shrinkage,ridge", [("ledoit_wolf", 0.0), ("ledoit_wolf", 0.01), ("none", 0.01)])
def test_covariance_from_statistics_equals_the_fit_on_samples(shrinkage, ridge):
    from anomedge.models.padim import gaussian_fit

    x = _samples(n=12, c=8)  # N < C·2: shrinkage matters
    merged = gs.combine(gs.from_samples(x[:, :5]), gs.from_samples(x[:, 5:]))
    _, ref = gaussian_fit(torch.from_numpy(x), shrinkage, ridge)
    np.testing.assert_allclose(gs.covariance(merged, shrinkage, ridge), ref.numpy(), rtol=1e-10, atol=1e-12)
    if shrinkage == "ledoit_wolf" and ridge == 0:
        _, lw, _ = ledoit_wolf(torch.from_numpy(x))
        np.testing.assert_allclose(gs.covariance(merged, shrinkage, 0.0), lw.numpy(), rtol=1e-10, atol=1e-12)


def test_pack_round_trip_and_bad_arrays():
    s = gs.from_samples(_samples(p=3, n=9, c=4))
    packed = gs.pack(s)
    assert packed.shape == (3, gs.width(4)) and packed.dtype == np.float64
    _close(gs.unpack(packed, 4, s.count), s, rtol=0)
    with pytest.raises(InputError, match="expected"):
        gs.unpack(packed[:, :-1], 4, s.count)
    bad = packed.copy()
    bad[0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        gs.unpack(bad, 4, s.count)


# --- the greedy continuation (numpy) ------------------------------------------------------------------------

def test_extend_covers_every_candidate_within_the_radius_and_matches_the_naive_loop():
    bank = RNG.standard_normal((40, 5)).astype(np.float32)
    new = (RNG.standard_normal((300, 5)) * 1.5 + 1.0).astype(np.float32)
    radius = 0.8
    far = FarPatches(bank, radius)
    far.add(new[:150])
    far.add(new[150:])
    cands, d2 = far.candidates()
    ext = extend(cands, d2, radius, max_new=10_000)
    grown = np.concatenate([bank, cands[ext.picks]])
    nearest = np.sqrt(((new[:, None, :].astype(np.float64) - grown[None]) ** 2).sum(2)).min(1)
    assert nearest.max() <= radius * (1 + 1e-6) and ext.residual <= radius
    # naive greedy: farthest candidate from bank ∪ picks, one at a time
    mind = ((cands[:, None, :].astype(np.float64) - bank[None]) ** 2).sum(2).min(1)
    picks = []
    while mind.max() > radius ** 2:
        j = int(np.argmax(mind))
        picks.append(j)
        mind = np.minimum(mind, ((cands.astype(np.float64) - cands[j]) ** 2).sum(1))
        mind[j] = -np.inf
    assert ext.picks.tolist() == picks


def test_extend_stops_at_max_new_and_reports_the_residual():
    cands = RNG.standard_normal((100, 4)).astype(np.float32) * 5
    d2 = np.full(100, 1e6)
    ext = extend(cands, d2, 0.1, max_new=7)
    assert len(ext.picks) == 7 and ext.residual > 0.1


def test_coverage_radius_is_the_farthest_patch():
    bank = RNG.standard_normal((20, 3)).astype(np.float32)
    pts = RNG.standard_normal((200, 3)).astype(np.float32)
    ref = np.sqrt(((pts[:, None].astype(np.float64) - bank[None]) ** 2).sum(2)).min(1).max()
    assert coverage_radius(pts, bank) == pytest.approx(ref, rel=1e-5)


# --- PaDiM: update == refit (detector level, no export) -----------------------------------------------------

def test_padim_statistics_merge_equals_a_refit_on_the_union(elpv_paths):
    from anomedge.models.features import extract

    cfg = dict(image_size=32, n_channels=12, grid_pool=1, batch_size=4)
    a, b, c = elpv_paths[:8], elpv_paths[8:12], elpv_paths[12:16]
    refit = Padim(PadimConfig(**cfg), progress=False).fit([*a, *b, *c])
    model = Padim(PadimConfig(**cfg), progress=False).fit(a)
    stats = gs.unpack(gs.pack(model.stats), 12, model.stats.count)  # through the artifact's storage
    for part in (b, c):
        feats = extract(model.graph(), part, model.input_spec(), 4, False)
        n, ch, h, w = feats.shape
        stats = gs.combine(stats, gs.from_samples(feats.reshape(n, ch, h * w).transpose(2, 0, 1)))
    _close(stats, refit.stats, rtol=1e-9)
    mean, factor = gaussian_arrays(stats, "ledoit_wolf", 0.01, "float32")
    for got, ref in ((mean, refit.mean), (factor, refit.factor)):
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * np.abs(ref).max())


# --- PatchCore through the real artifact (tests/conftest.py: tiny_artifact) --------------------------------

def _new_good(tmp_path: Path, paths, corrupt: int = 0) -> Path:
    folder = tmp_path / "new_good"
    folder.mkdir()
    for p in paths:
        shutil.copy(p, folder / p.name)
    for i in range(corrupt):
        (folder / f"zz_corrupt_{i}.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return folder


@pytest.fixture(scope="module")
def patchcore_update(tiny_artifact, elpv_paths, tmp_path_factory):
    from anomedge.cli.paths import good_images

    tmp = tmp_path_factory.mktemp("update")
    before = {p.name: p.read_bytes() for p in tiny_artifact.root.iterdir() if p.is_file()}
    folder = _new_good(tmp, elpv_paths[20:32], corrupt=1)
    with pytest.warns(UserWarning, match="skipped"):
        report = update_artifact(tiny_artifact.root, good_images(str(folder)), tmp / "v2", holdout=0.25,
                                 progress=False)
    return report, before, folder


def test_patchcore_update_writes_a_new_verified_version(patchcore_update, tiny_artifact):
    report, before, _ = patchcore_update
    art = Artifact.load(report.artifact.root)
    meta = art.metadata
    assert meta.model["version"] == 2 and report.version == 2
    entry = meta.model["history"][-1]
    assert entry["previous_sha256"] == tiny_artifact.sha256 and entry["n_images_added"] == report.n_added
    assert report.n_holdout == 3 and report.n_added + len(report.skipped) == 10  # 12 good + 1 corrupt, 25 % held out
    rows = art.array("bank.npy").shape[0]
    assert meta.scoring["bank_rows"] == rows == entry["bank_rows"][1] > entry["bank_rows"][0]
    # bounded: coreset_fraction × all training patches (a refit's size)
    fit = tiny_artifact.metadata.model["fit"]
    assert rows <= round(fit["coreset_fraction"] * meta.model["fit"]["n_train_patches"])
    np.testing.assert_array_equal(art.array("bank.npy")[:entry["bank_rows"][0]], tiny_artifact.array("bank.npy"))
    assert meta.thresholds["image"] == report.threshold_after and meta.thresholds["history"]
    # the input artifact is untouched and no temp folder is left beside the new one
    assert {p.name: p.read_bytes() for p in tiny_artifact.root.iterdir() if p.is_file()} == before
    assert [p.name for p in report.artifact.root.parent.iterdir() if p.name.startswith(".")] == []


def test_patchcore_new_images_no_longer_score_high(patchcore_update, tiny_artifact):
    """Every patch of an added image lies within the recorded coverage radius of the grown bank, so its image
    score (a mean of patch scores) does too; before the update the same images scored above it."""
    report, _, folder = patchcore_update
    from anomedge.export.fit import split_holdout

    added = [p for p in split_holdout(sorted(folder.iterdir()), 0.25)[0] if "corrupt" not in p.name]
    frames = [read_image(p) for p in added]
    radius = report.artifact.metadata.model["fit"]["coverage_radius"]
    with Inspector(tiny_artifact, "onnxruntime") as old, Inspector(report.artifact, "onnxruntime") as new:
        before = np.concatenate([old.inspect([f]).scores for f in frames])
        after = np.concatenate([new.inspect([f]).scores for f in frames])
    assert after.max() <= radius * (1 + 1e-5)
    assert before.max() > radius and (after <= before + 1e-6).all()


def test_updated_artifact_passes_verify_and_matches_the_reference(patchcore_update):
    from anomedge.runtime.verify import verify_inspector

    report, _, _ = patchcore_update
    with Inspector(report.artifact, "onnxruntime") as inspector:
        result = verify_inspector(inspector)
    assert result.status == "pass", result.row()


def test_update_refuses_a_tampered_artifact_first(artifact_copy, tmp_path):
    bank = np.load(artifact_copy / "bank.npy")
    bank[0, 0] += 1.0
    np.save(artifact_copy / "bank.npy", bank)
    with pytest.raises(ArtifactError, match="bank.npy: sha256"):
        update_artifact(artifact_copy, [], tmp_path / "out")  # hash check runs before the (empty) image list


def test_update_refuses_other_detectors(artifact_copy, tmp_path):
    meta = json.loads((artifact_copy / "metadata.json").read_text())
    meta["detector"] = "kmeans"
    write_metadata(artifact_copy, meta)
    with pytest.raises(InputError, match="ad-update supports padim, patchcore; refit with ad-export"):
        update_artifact(artifact_copy, [Path("x.png")], tmp_path / "out")


def test_update_refuses_existing_output_and_the_input_itself(artifact_copy, elpv_paths):
    with pytest.raises(InputError, match="already exists"):
        update_artifact(artifact_copy, elpv_paths[:2], artifact_copy.parent)
    with pytest.raises(InputError, match="never modifies"):
        update_artifact(artifact_copy, elpv_paths[:2], artifact_copy)


def test_update_fails_when_no_image_is_usable(artifact_copy, tmp_path):
    folder = _new_good(tmp_path, [], corrupt=3)
    with pytest.warns(UserWarning), pytest.raises(InputError, match="none of the 3 new good images"):
        update_artifact(artifact_copy, sorted(folder.iterdir()), tmp_path / "out", keep_threshold=True,
                        progress=False)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


def test_max_bank_rows_below_the_bank_is_refused(artifact_copy, tmp_path, elpv_paths):
    rows = Artifact.load(artifact_copy).metadata.scoring["bank_rows"]
    with pytest.raises(InputError, match="only adds"):
        update_artifact(artifact_copy, elpv_paths[20:22], tmp_path / "out", keep_threshold=True,
                        max_bank_rows=rows - 1, progress=False)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "anomedge.cli.update", *args], capture_output=True, text=True,
                          timeout=300)


def test_cli_bad_inputs_are_one_line_exit_2(artifact_copy, tmp_path):
    missing = _cli(str(artifact_copy), "--good", str(tmp_path / "nope"))
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "no such folder" in missing.stderr
    (tmp_path / "empty").mkdir()
    empty = _cli(str(artifact_copy), "--good", str(tmp_path / "empty"))
    assert empty.returncode == 2 and "no images found" in empty.stderr


@pytest.mark.slow  # a whole update in a child process (torch import + features + golden frames)
def test_cli_signed_input_says_the_update_needs_signing(artifact_copy, tmp_path, elpv_paths):
    pytest.importorskip("cryptography")
    from anomedge.artifact.signing import keygen, sign

    private, _ = keygen(tmp_path / "key")
    sign(artifact_copy, private)
    folder = _new_good(tmp_path, elpv_paths[20:23])
    run = _cli(str(artifact_copy), "--good", str(folder), "--out", str(tmp_path / "v2"), "--keep-threshold")
    assert run.returncode == 0, run.stderr
    assert "is NOT signed: sign it with ad-sign" in run.stderr and "wrote" in run.stdout
    assert not (tmp_path / "v2" / "signature.json").exists()


# --- PaDiM through real artifacts: update(A) then update(B) == fit(A ∪ B) ---------------------------------

@pytest.mark.slow  # three PaDiM exports (the ONNX export dominates)
def test_padim_artifact_updates_equal_a_refit_on_the_union(elpv_paths, tmp_path):
    from anomedge.export.fit import fit_and_export

    params = {"image_size": 32, "n_channels": 12, "grid_pool": 1}
    base, a, b = elpv_paths[:10], elpv_paths[10:16], elpv_paths[16:22]
    fit_and_export(base, "padim", params, tmp_path / "v1", holdout=0.0, progress=False)
    v2 = update_artifact(tmp_path / "v1", a, tmp_path / "v2", keep_threshold=True, progress=False)
    v3 = update_artifact(tmp_path / "v2", b, tmp_path / "v3", keep_threshold=True, progress=False)
    refit = fit_and_export([*base, *a, *b], "padim", params, tmp_path / "refit", holdout=0.0, progress=False).artifact
    new = v3.artifact
    assert new.metadata.model["version"] == 3 and len(new.metadata.model["history"]) == 2
    assert new.metadata.model["stats"]["count"] == refit.metadata.model["stats"]["count"] == 22
    for name in ("mean.npy", "factor.npy", "stats.npy"):
        ref = refit.array(name)
        np.testing.assert_allclose(new.array(name), ref, rtol=0, atol=1e-5 * np.abs(ref).max(), err_msg=name)
    frames = [read_image(p) for p in elpv_paths[22:30]]
    with Inspector(new, "onnxruntime") as x, Inspector(refit, "onnxruntime") as y:
        for f in frames:
            np.testing.assert_allclose(x.inspect([f]).scores, y.inspect([f]).scores, rtol=1e-5)
