"""The autoencoder demo on scikit-learn's digits: one digit class is the anomaly, the others are good.

``run_digits_demo(out, …)`` trains the convolutional autoencoder on the good training digits (32×32
gray, ``anomedge.datasets.digits``), exports the artifact, sets the default threshold on held-out good
digits, scores the test digits through the torch-free runtime (onnxruntime) and writes into ``out``:
``artifact/`` (the exported detector), ``loss_curve.png``, ``error_histogram.png`` (image scores, good vs
anomalous, with the threshold), ``triptych_<good|anomaly>_<rank>.png`` (``[input | reconstruction |
error]``: the lowest, median and highest scoring test digit of each class), ``tsne_latent.png`` (a 2-D
t-SNE of the latent codes of the test digits, coloured by digit) and ``metrics.json`` (AUROC, decisions,
training time, artifact size, parity vs the PyTorch reference). ``main`` is the click command
(``ad-demo-digits``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

DEFAULTS: dict[str, Any] = {"image_size": 32, "channels": 1, "width": 32, "latent_dim": 64, "epochs": 20,
                            "map_sigma": 1.0, "reduction": {"name": "mean"}}
RANKS = ("low", "median", "high")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def digit_labels(paths) -> np.ndarray:
    """The digit class of each image, from its file name (its index in ``load_digits``)."""
    from sklearn.datasets import load_digits

    target = load_digits().target
    return np.array([int(target[int(Path(p).stem)]) for p in paths])


def save_histogram(scores: np.ndarray, labels: np.ndarray, threshold: float | None, png: Path, digit: int) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    bins = np.linspace(scores.min(), scores.max(), 40)
    ax.hist(scores[labels == 0], bins=bins, alpha=0.6, label=f"good (not {digit})")
    ax.hist(scores[labels == 1], bins=bins, alpha=0.6, label=f"anomalous ({digit})")
    if threshold is not None:
        ax.axvline(threshold, color="k", ls="--", lw=1, label="threshold (q0.99 held-out good)")
    ax.set_xlabel("image score (mean reconstruction error)")
    ax.set_ylabel("test digits")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


def save_triptych(image: np.ndarray, recon: np.ndarray, error: np.ndarray, vmax: float, title: str, png: Path) -> None:
    """image, recon (H,W) in [0,1]; error (H,W) on a shared colour scale [0, vmax]."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(6, 2.4), dpi=100)
    for ax, data, name, kw in ((axes[0], image, "input", {"cmap": "gray", "vmin": 0, "vmax": 1}),
                               (axes[1], recon, "reconstruction", {"cmap": "gray", "vmin": 0, "vmax": 1}),
                               (axes[2], error, "error", {"cmap": "inferno", "vmin": 0, "vmax": vmax})):
        ax.imshow(data, interpolation="nearest", **kw)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


def save_tsne(codes: np.ndarray, digits: np.ndarray, anomaly_digit: int, png: Path, seed: int = 0) -> None:
    from sklearn.manifold import TSNE

    plt = _plt()
    xy = TSNE(n_components=2, init="pca", perplexity=min(30.0, (len(codes) - 1) / 3), random_state=seed).fit_transform(codes)
    fig, ax = plt.subplots(figsize=(5.5, 5), dpi=100)
    cmap = plt.get_cmap("tab10")
    for d in np.unique(digits):
        sel = digits == d
        anomalous = d == anomaly_digit
        ax.scatter(xy[sel, 0], xy[sel, 1], s=30 if anomalous else 8, marker="x" if anomalous else "o",
                   color="k" if anomalous else cmap(d), label=f"{d}{' (anomaly)' if anomalous else ''}")
    ax.legend(fontsize=7, markerscale=1.5, ncol=2)
    ax.set_title("t-SNE of the autoencoder's latent codes (test digits)", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


def run_digits_demo(out: str | Path, anomaly_digit: int = 7, params: dict[str, Any] | None = None,
                    holdout: float = 0.1, cache_dir: str | Path | None = None, progress: bool | None = None,
                    tsne: bool = True, parity_frames: int = 64, max_train: int | None = None) -> dict[str, Any]:
    """Train, export, score on onnxruntime, plot; returns (and writes) the metrics.
    ``max_train``: fit on a seeded subset of at most that many good training digits (a quick look)."""
    import torch

    from ..artifact import Artifact
    from ..benchmark import parity, score_frames
    from ..calibrate.metrics import auroc
    from ..datasets import load_dataset
    from ..export.fit import holdout_threshold, split_holdout
    from ..export.writer import write_detector
    from ..models.autoencoder import Autoencoder
    from ..models.reconstruction import load_tensor
    from ..models.training import save_loss_curve
    from ..runtime.pipeline import Inspector
    from ..runtime.preprocess import read_image

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = Autoencoder.from_params({**DEFAULTS, **(params or {})}, progress=progress)  # bad params fail first
    split = load_dataset(f"digits:{anomaly_digit}", Path(cache_dir) if cache_dir else None)
    train_paths = list(split.train)
    if max_train is not None and max_train < len(train_paths):
        keep = np.sort(np.random.default_rng(0).permutation(len(train_paths))[:max_train])
        train_paths = [train_paths[i] for i in keep]
    fit_paths, hold_paths = split_holdout(train_paths, holdout)
    start = time.perf_counter()
    model.fit(fit_paths)
    fit_seconds = time.perf_counter() - start
    artifact = write_detector(model, out / "artifact")
    threshold = None
    if hold_paths:
        with Artifact.edit(artifact.root) as edit:
            edit.meta["thresholds"] = holdout_threshold(edit.artifact, hold_paths, 0.99)
        artifact = edit.artifact
        threshold = float(artifact.metadata.thresholds["image"])
    save_loss_curve(model.history, out / "loss_curve.png", title="autoencoder on digits")

    labels = np.asarray(split.test_labels)
    frames = [read_image(p) for p in split.test]
    with Inspector(artifact, "onnxruntime") as ort:
        start = time.perf_counter()
        scores, maps = score_frames(ort, frames)
        score_ms = (time.perf_counter() - start) * 1e3 / len(frames)
        outputs = ort.stages.infer(ort.stages.preprocess(frames))
    n_par = min(parity_frames, len(frames))
    with Inspector(artifact, "torch") as ref:
        ref_scores, ref_maps = score_frames(ref, frames[:n_par])
    par = parity(ref_scores, ref_maps, scores[:n_par], maps[:n_par], threshold)

    save_histogram(scores, labels, threshold, out / "error_histogram.png", anomaly_digit)
    images = outputs["reconstruction"][:, 0] * 0.5 + 0.5  # normalised → [0,1]
    ort_inputs = [f.astype(np.float32) / 255.0 for f in frames]
    vmax = float(np.quantile(maps, 0.999))
    triptychs = []
    for cls, name in ((0, "good"), (1, "anomaly")):
        idx = np.flatnonzero(labels == cls)
        if len(idx) == 0:
            continue
        order = idx[np.argsort(scores[idx])]
        for rank, i in zip(RANKS, (order[0], order[len(order) // 2], order[-1])):
            png = out / f"triptych_{name}_{rank}.png"
            save_triptych(ort_inputs[i], np.clip(images[i], 0, 1), maps[i], vmax,
                          f"{name} ({rank} score): {Path(split.test[i]).name}, score {scores[i]:.4f}", png)
            triptychs.append(png.name)

    if tsne:
        with torch.inference_mode():
            codes = model.module.encode(load_tensor(list(split.test), model.input_spec())).numpy()
        save_tsne(codes, digit_labels(split.test), anomaly_digit, out / "tsne_latent.png")

    ng = scores > threshold if threshold is not None else np.zeros(len(scores), bool)
    size = sum((artifact.root / name).stat().st_size for name in artifact.metadata.files)
    metrics = {
        "data": split.summary(), "anomaly_digit": anomaly_digit, "n_fit": len(fit_paths), "n_holdout": len(hold_paths),
        "params": {**DEFAULTS, **(params or {})},
        "auroc": auroc(labels, scores) if 0 < labels.sum() < len(labels) else None,
        "auroc_max_map": auroc(labels, maps.reshape(len(maps), -1).max(axis=1)) if 0 < labels.sum() < len(labels) else None,
        "threshold": threshold, "decisions": {"NG": int(ng.sum()), "OK": int((~ng).sum()),
                                              "true NG": int((ng & (labels == 1)).sum()),
                                              "false NG": int((ng & (labels == 0)).sum())},
        "fit_seconds": round(fit_seconds, 2), "training": model.history.summary(),
        "artifact_bytes": int(size), "parameters": int(sum(p.numel() for p in model.module.parameters())),
        "runtime_ms_per_image": round(score_ms, 3),
        "parity_vs_torch": {"frames": par.n, "max_rel_score_diff": par.max_rel_score_diff,
                            "max_map_diff": par.max_map_diff, "decision_agreement": par.decision_agreement},
        "files": ["loss_curve.png", "error_histogram.png", *triptychs, *(["tsne_latent.png"] if tsne else []),
                  "metrics.json"],
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", default="runs/digits", show_default=True, type=click.Path(file_okay=False),
              help="Output folder (artifact, PNGs, metrics.json).")
@click.option("--digit", default=7, show_default=True, type=click.IntRange(0, 9), help="The anomalous digit class.")
@click.option("--epochs", default=None, type=click.IntRange(min=1), help=f"Training epochs [{DEFAULTS['epochs']}].")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="Autoencoder parameter (repeatable).")
@click.option("--threads", default=None, type=click.IntRange(min=1), help="torch CPU threads while training.")
@click.option("--max-train", default=None, type=click.IntRange(min=2),
              help="Fit on at most N good training digits (seeded subset; all by default).")
@click.option("--no-tsne", is_flag=True, help="Skip the t-SNE plot.")
@click.option("--quiet", is_flag=True, help="No progress bar; print only the metrics JSON.")
def main(out, digit, epochs, params, threads, max_train, no_tsne, quiet):
    """Train an autoencoder on the good digits, score the anomalous digit on onnxruntime, write plots."""
    from ..cli.common import one_line_errors, parse_params

    @one_line_errors
    def body():
        values = parse_params(params)
        if epochs is not None:
            values["epochs"] = epochs
        if threads is not None:
            values["threads"] = threads
        metrics = run_digits_demo(out, digit, values, progress=False if quiet else True,
                                  tsne=not no_tsne, max_train=max_train)
        if quiet:
            click.echo(json.dumps(metrics))
            return
        click.echo(f"{metrics['data']}")
        click.echo(f"AUROC {metrics['auroc']:.4f} (mean error; max-of-map {metrics['auroc_max_map']:.4f}), "
                   f"threshold {metrics['threshold']:.5f}, decisions {metrics['decisions']}")
        click.echo(f"training {metrics['training']['seconds']:.1f} s ({metrics['training']['amp']}), artifact "
                   f"{metrics['artifact_bytes'] / 1e6:.2f} MB, runtime {metrics['runtime_ms_per_image']:.2f} ms/image, "
                   f"parity max rel Δscore {metrics['parity_vs_torch']['max_rel_score_diff']:.2e}")
        click.echo(f"wrote {Path(out).resolve()}: {', '.join(metrics['files'])}")

    body()


if __name__ == "__main__":
    main()
