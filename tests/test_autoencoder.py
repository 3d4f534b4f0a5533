"""Convolutional autoencoder: fit → export → onnxruntime vs PyTorch reference, weights round trip,
training that lowers the loss, the in-graph error map, and parameter errors."""

import json

import numpy as np
import pytest
import torch

from anomedge.artifact import Artifact
from anomedge.benchmark import parity, reference_and_runtime
from anomedge.errors import ArtifactError, InputError
from anomedge.export.fit import fit_and_export
from anomedge.models.autoencoder import Autoencoder, AutoencoderConfig
from anomedge.models.reconstruction import ErrorMap, load_tensor
from anomedge.models.training import History, TrainSettings, lr_factor, save_loss_curve, train
from anomedge.runtime.pipeline import Inspector
from anomedge.runtime.preprocess import read_image

TINY = {"image_size": 32, "width": 8, "latent_dim": 16, "epochs": 2, "batch_size": 4, "amp": "fp32", "threads": 1}


@pytest.fixture(scope="module")
def ae_artifact(tmp_path_factory, elpv_paths):
    out = tmp_path_factory.mktemp("ae") / "art"
    return fit_and_export(elpv_paths[:12], "autoencoder", TINY, out, holdout=0.25, progress=False).artifact


@pytest.mark.slow  # fits and exports a real artifact (module fixture)
def test_runtime_matches_torch_reference(ae_artifact, elpv_paths):
    frames = [read_image(p) for p in elpv_paths[12:20]]
    ref_scores, ref_maps, scores, maps, threshold = reference_and_runtime(ae_artifact, frames)
    p = parity(ref_scores, ref_maps, scores, maps, threshold)
    assert p.max_rel_score_diff < 1e-4, p
    assert p.max_map_diff < 1e-3, p
    assert p.decision_agreement == 1.0
    assert maps.shape == (8, 32, 32)
    assert np.ptp(scores) > 0
    meta = ae_artifact.metadata
    assert meta.scoring["kind"] == "reconstruction" and meta.outputs["names"] == ["error", "reconstruction"]
    assert "weights.safetensors" in meta.files


@pytest.mark.slow  # fits and exports a real artifact (module fixture)
def test_export_writes_the_loss_curve_beside_the_hashed_files(ae_artifact):
    png = ae_artifact.root / "loss_curve.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "loss_curve.png" not in ae_artifact.metadata.files  # a training record: the runtime never reads it
    assert Artifact.load(ae_artifact.root).metadata.files == ae_artifact.metadata.files


@pytest.mark.slow  # fits and exports a real artifact (module fixture)
def test_graph_outputs_error_and_reconstruction(ae_artifact, elpv_paths):
    with Inspector(ae_artifact, "onnxruntime") as ort:
        out = ort.stages.infer(ort.stages.preprocess([read_image(elpv_paths[0])]))
    assert out["error"].shape == (1, 1, 32, 32) and out["reconstruction"].shape == (1, 3, 32, 32)
    assert (out["error"] >= 0).all()


@pytest.mark.slow  # fits and exports a real artifact (module fixture)
def test_weights_round_trip_through_safetensors(ae_artifact, tmp_path):
    from safetensors.torch import load_file

    meta = ae_artifact.metadata
    module = Autoencoder.build_graph(meta.model, ae_artifact)
    stored = load_file(str(ae_artifact.path("weights.safetensors")))
    state = module.state_dict()
    assert set(stored) == set(state)
    for name, value in stored.items():
        torch.testing.assert_close(state[name], value, rtol=0, atol=0)
    with pytest.raises(ArtifactError, match="weights.safetensors"):
        Autoencoder.build_graph({**meta.model, "architecture": {**meta.model["architecture"], "latent_dim": 7}},
                                ae_artifact)
    with pytest.raises(ArtifactError, match="pass the artifact"):
        Autoencoder.build_graph(meta.model)


@pytest.mark.slow  # fits and exports a real artifact (module fixture)
def test_tampered_weights_are_refused(ae_artifact, tmp_path):
    import shutil

    copy = tmp_path / "art"
    shutil.copytree(ae_artifact.root, copy)
    data = bytearray((copy / "weights.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (copy / "weights.safetensors").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="weights.safetensors: sha256"):
        Artifact.load(copy)


def test_training_lowers_the_loss_and_saves_a_curve(elpv_paths, tmp_path):
    detector = Autoencoder(AutoencoderConfig(**{**TINY, "epochs": 12, "lr": 3e-3}), progress=False)
    data = load_tensor(elpv_paths[:8], detector.input_spec())
    with torch.no_grad():
        before = float(detector.loss(detector.module.eval(), data, torch.Generator()))
    history = train(detector.module, data, detector.loss, detector.settings(), progress=False)
    with torch.no_grad():
        after = float(detector.loss(detector.module, data, torch.Generator()))
    assert after < 0.6 * before, (before, after)
    assert len(history.step_loss) == 12 * 2 and len(history.epoch_loss) == 12
    png = save_loss_curve(history, tmp_path / "loss.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    json.dumps(history.to_dict())


def test_training_is_seeded(elpv_paths):
    def run():
        d = Autoencoder(AutoencoderConfig(**{**TINY, "epochs": 1}), progress=False)
        return train(d.module, load_tensor(elpv_paths[:8], d.input_spec()), d.loss, d.settings(), False).step_loss

    assert run() == run()


def test_amp_auto_picks_a_measured_precision(elpv_paths):
    d = Autoencoder(AutoencoderConfig(**{**TINY, "epochs": 1, "amp": "auto"}), progress=False)
    history = train(d.module, load_tensor(elpv_paths[:4], d.input_spec()), d.loss, d.settings(), False)
    assert set(history.amp_race_ms) == {"fp32", "bf16"}
    assert history.amp == min(history.amp_race_ms, key=history.amp_race_ms.get)


def test_lr_schedule_warms_up_then_decays_to_zero():
    values = [lr_factor(s, 100, 10) for s in range(101)]
    np.testing.assert_allclose(values[:10], np.arange(1, 11) / 10, rtol=1e-12)
    assert values[10] == pytest.approx(1.0) and values[55] == pytest.approx(0.5) and values[100] == pytest.approx(0.0)
    assert all(a >= b for a, b in zip(values[10:], values[11:]))


def test_error_maps_mse_and_ssim():
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    y = x.clone()
    y[:, :, 4:8, 4:8] += 0.5
    mse = ErrorMap("mse")(y, x)
    np.testing.assert_allclose(mse[:, 0, 4:8, 4:8].numpy(), 0.0625, rtol=1e-6)  # (0.5 · std 0.5)²
    assert mse[:, 0, 10:, 10:].abs().max() == 0
    ssim = ErrorMap("ssim")(y, x)
    assert ssim.shape == (2, 1, 16, 16)
    np.testing.assert_allclose(ErrorMap("ssim")(x, x).numpy(), 0.0, atol=1e-5)
    assert ssim[:, 0, 6, 6].min() > 10 * ssim[:, 0, 14, 14].max()
    smooth = ErrorMap("mse", sigma=1.0)(y, x)
    np.testing.assert_allclose(smooth.sum().item(), mse.sum().item(), rtol=0.05)  # blur keeps the mass (reflect)
    assert smooth.max() < mse.max()


@pytest.mark.parametrize("params, match", [
    ({"image_size": 30}, "not divisible"),
    ({"channels": 2}, "channels 2"),
    ({"error_map": "l1"}, "error_map 'l1'"),
    ({"reduction": {"name": "median"}}, "reduction"),
    ({"epochs": 0}, "epochs 0"),
    ({"amp": "fp16"}, "amp 'fp16'"),
    ({"latent_dim": 0}, "latent_dim 0"),
    ({"ssim_weight": -1}, "ssim_weight -1"),
    ({"threads": 0}, "threads 0"),
    ({"latent": 8}, "unknown parameter"),
])
def test_bad_parameters_are_input_errors(params, match):
    with pytest.raises(InputError, match=match):
        Autoencoder.from_params({**TINY, **params})


def test_unfitted_detector_cannot_export(tmp_path):
    with pytest.raises(InputError, match="not trained"):
        Autoencoder.from_params(TINY).write_files(tmp_path)


def test_history_summary_is_small():
    h = History(step_loss=[3.0, 2.0, 1.0, 0.5], epoch_loss=[2.5, 0.75], lr=[1, 1, 1, 1], seconds=1.0)
    s = h.summary()
    assert s["first_epoch_loss"] == 2.5 and s["final_epoch_loss"] == 0.75 and "step_loss" not in s
    with pytest.raises(InputError, match="batch_size"):
        TrainSettings(batch_size=0).check("x")


@pytest.mark.slow  # one ONNX export
def test_ssim_error_map_exports_and_matches_torch(tmp_path):
    import onnxruntime as ort

    from anomedge.export.onnx import export_onnx

    detector = Autoencoder(AutoencoderConfig(**{**TINY, "error_map": "ssim", "map_sigma": 2.0}))
    path = export_onnx(detector.graph(), detector.input_spec(), tmp_path / "m.onnx", detector.output_names)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.inference_mode():
        ref_error, ref_recon = detector.graph()(x)
    error, recon = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})
    assert error.shape == (2, 1, 32, 32)
    np.testing.assert_allclose(error, ref_error.numpy(), rtol=1e-4, atol=1e-3 * float(ref_error.max()))
    np.testing.assert_allclose(recon, ref_recon.numpy(), rtol=1e-4, atol=1e-5)
    assert 0 <= float(ref_error.min()) and float(ref_error.max()) <= 1
