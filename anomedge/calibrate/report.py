"""ad-eval's report folder: metrics.json, scores.csv, ROC / PR / histogram PNGs, heatmap triplets
``[image | overlay | ground truth]`` for the worst and best cases, and a one-page report.html.

Plots use matplotlib's Agg backend (nothing is shown).
"""

from __future__ import annotations

import csv
import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from .metrics import image_metrics, pixel_metrics, pr_curve, roc_curve


@dataclass
class Evaluation:
    paths: list[Path]
    labels: np.ndarray  # (N,) 0/1
    scores: np.ndarray  # (N,)
    maps: np.ndarray  # (N,H,W)
    masks: np.ndarray | None  # (N,H,W) bool, or None
    threshold: float | None
    pixel_threshold: float | None


def write_report(ev: Evaluation, out: Path, title: str, extra: dict[str, Any] | None = None, n_cases: int = 4) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, Any] = {"image": image_metrics(ev.labels, ev.scores, ev.threshold), **(extra or {})}
    if ev.masks is not None and ev.masks.any():
        metrics["pixel"] = pixel_metrics(ev.masks, ev.maps, ev.pixel_threshold)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    with open(out / "scores.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "score", "prediction"])
        for p, y, s in zip(ev.paths, ev.labels, ev.scores):
            pred = "" if ev.threshold is None else ("NG" if s > ev.threshold else "OK")
            writer.writerow([str(p), int(y), f"{s:.6g}", pred])

    fpr, tpr, _ = roc_curve(ev.labels, ev.scores)
    precision, recall, _ = pr_curve(ev.labels, ev.scores)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    axes[0].plot(fpr, tpr)
    axes[0].plot([0, 1], [0, 1], ":", color="grey")
    axes[0].set(title=f"ROC (AUROC {metrics['image']['auroc']:.3f})", xlabel="false-positive rate", ylabel="true-positive rate")
    axes[1].plot(recall, precision)
    axes[1].set(title=f"PR (AP {metrics['image']['pr_auc']:.3f})", xlabel="recall", ylabel="precision")
    bins = np.linspace(ev.scores.min(), ev.scores.max(), 40)
    axes[2].hist(ev.scores[ev.labels == 0], bins, alpha=0.6, label="good")
    axes[2].hist(ev.scores[ev.labels == 1], bins, alpha=0.6, label="defective")
    if ev.threshold is not None:
        axes[2].axvline(ev.threshold, color="k", linestyle="--", label="threshold")
    axes[2].set(title="image scores", xlabel="score", ylabel="images")
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=90)
    plt.close(fig)

    cases = _cases(ev, n_cases)
    for name, index in cases:
        _triplet(ev, index, out / f"{name}.png")
    (out / "report.html").write_text(_html(title, metrics, cases, ev))
    return metrics


def _cases(ev: Evaluation, n: int) -> list[tuple[str, int]]:
    """Worst: highest-scoring good and lowest-scoring defective; best: the reverse."""
    good, bad = np.flatnonzero(ev.labels == 0), np.flatnonzero(ev.labels == 1)
    picks = [("worst_good", good[np.argsort(-ev.scores[good])][: n // 2]),
             ("worst_defective", bad[np.argsort(ev.scores[bad])][: n // 2]),
             ("best_defective", bad[np.argsort(-ev.scores[bad])][: n // 2]),
             ("best_good", good[np.argsort(ev.scores[good])][: n // 2])]
    return [(f"{name}_{i}", int(idx)) for name, idxs in picks for i, idx in enumerate(idxs)]


def _triplet(ev: Evaluation, index: int, path: Path) -> None:
    from ..runtime.overlay import overlay
    from ..runtime.preprocess import read_image, to_rgb_float

    frame = read_image(ev.paths[index])
    low, high = np.percentile(ev.maps, 1), np.percentile(ev.maps, 99.9)
    over = overlay(frame, ev.maps[index], low, high)
    h, w = over.shape[:2]
    image = np.clip(to_rgb_float(frame)[:, :, ::-1], 0, 255).astype(np.uint8)
    mask = np.zeros((h, w), np.uint8)
    if ev.masks is not None:
        mask = cv2.resize(ev.masks[index].astype(np.uint8) * 255, (w, h), interpolation=cv2.INTER_NEAREST)
    cv2.imwrite(str(path), np.concatenate([image, over, cv2.cvtColor(mask, cv2.COLOR_GRAY2BGR)], axis=1))


def _html(title: str, metrics: dict, cases: Sequence[tuple[str, int]], ev: Evaluation) -> str:
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.4g}</td></tr>" if isinstance(v, float) else
                   f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>"
                   for block in metrics.values() if isinstance(block, dict) for k, v in block.items())
    figures = "".join(f"<figure><img src='{name}.png'><figcaption>{html.escape(name)}: {html.escape(ev.paths[i].name)}"
                      f" — score {ev.scores[i]:.4g}, label {'defective' if ev.labels[i] else 'good'}</figcaption></figure>"
                      for name, i in cases)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;margin:2em}img{max-width:100%}td{padding:2px 12px}"
            "figure{margin:1em 0}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><table>{rows}</table><img src='curves.png'>"
            f"<h2>Cases [image | overlay | ground truth]</h2>{figures}</body></html>")
