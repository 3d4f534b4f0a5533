"""The digits demo end to end (tiny training): files written, metrics sane, runtime = torch reference."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from anomedge.demos.digits import digit_labels, main, save_tsne

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow  # trains, exports and scores ~500 digits
def test_demo_writes_plots_and_metrics(tmp_path, monkeypatch):
    monkeypatch.setenv("ANOMEDGE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    result = CliRunner().invoke(main, ["--out", str(out), "--digit", "7", "--epochs", "4", "--max-train", "300", "--threads", "1", "--quiet", "--no-tsne",
                                       "--param", "width=16", "--param", "latent_dim=16", "--param", "amp=fp32"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output.strip().splitlines()[-1])
    assert metrics == json.loads((out / "metrics.json").read_text())
    for name in metrics["files"]:
        if name.endswith(".png"):
            assert (out / name).read_bytes()[:8] == PNG, name
    assert {"loss_curve.png", "error_histogram.png", "triptych_good_low.png",
            "triptych_anomaly_high.png"} <= set(metrics["files"])
    assert "tsne_latent.png" not in metrics["files"] and not (out / "tsne_latent.png").exists()
    assert metrics["training"]["epochs"] == 4 and metrics["n_fit"] + metrics["n_holdout"] == 300
    assert metrics["training"]["final_epoch_loss"] < metrics["training"]["first_epoch_loss"]
    assert metrics["auroc"] > 0.6  # 7s reconstruct worse than the other digits after a short training
    assert metrics["parity_vs_torch"]["max_rel_score_diff"] < 1e-4
    assert metrics["parity_vs_torch"]["max_map_diff"] < 1e-3
    assert metrics["parity_vs_torch"]["decision_agreement"] == 1.0
    assert (out / "artifact" / "weights.safetensors").is_file()
    assert metrics["decisions"]["NG"] + metrics["decisions"]["OK"] == 503


def test_bad_parameter_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("ANOMEDGE_CACHE", str(tmp_path / "cache"))
    result = CliRunner().invoke(main, ["--out", str(tmp_path / "o"), "--param", "latent=3", "--no-tsne", "--quiet"])
    assert result.exit_code == 2
    assert "unknown parameter(s) latent" in result.output


def test_bad_digit_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(main, ["--out", str(tmp_path / "o"), "--digit", "12"])
    assert result.exit_code == 2


def test_tsne_plot_of_latent_codes(tmp_path):
    rng = np.random.default_rng(0)
    digits = np.repeat([0, 1, 7], 20)
    codes = rng.normal(size=(60, 8)) + digits[:, None] * 3.0
    save_tsne(codes, digits, 7, tmp_path / "tsne.png")
    assert (tmp_path / "tsne.png").read_bytes()[:8] == PNG


def test_digit_labels_come_from_the_file_index():
    from sklearn.datasets import load_digits

    target = load_digits().target
    np.testing.assert_array_equal(digit_labels(["a/0000.png", "b/0010.png", "0123.png"]), target[[0, 10, 123]])
