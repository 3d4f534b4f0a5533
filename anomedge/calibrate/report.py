"""ad-eval's report folder: metrics.json, scores.csv, ROC / PR / histogram PNGs, titled heatmap panels
``[image | overlay | ground truth (when the data set has masks)] + colour bar`` for the worst and best
cases, and a one-page report.html: metrics in words, confusion counts at the threshold, a table per
defect type (MVTec folders), pixel metrics.

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
    types: Sequence[str] | None = None  # defect type per image ("good", "crack", …); None: from MVTec folders


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
    axes[2].set(title="image scores", xlabel="anomaly score", ylabel="images")
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


HEADER = 28  # px: the title strip above the panels
BAR = 72  # px: colour bar column (16 px bar + value labels)


def _text(image: np.ndarray, text: str, org: tuple[int, int], scale: float = 0.5) -> None:
    cv2.putText(image, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)


def colour_bar(height: int, low: float, high: float, threshold: float | None = None) -> np.ndarray:
    """(height, BAR, 3) uint8 BGR: the JET scale of the overlays, ``high`` at the top, values written beside it,
    a black tick at ``threshold`` (the pixel threshold) when it lies in range."""
    bar = np.full((height, BAR, 3), 255, np.uint8)
    ramp = np.linspace(255, 0, max(height - 20, 2)).astype(np.uint8)[:, None]
    colours = cv2.applyColorMap(np.repeat(ramp, 16, axis=1), cv2.COLORMAP_JET)
    bar[10:10 + len(colours), 4:20] = colours
    _text(bar, f"{high:.3g}", (22, 18), 0.4)
    _text(bar, f"{low:.3g}", (22, height - 8), 0.4)
    if threshold is not None and low < threshold < high:
        y = 10 + int(round((high - threshold) / (high - low) * (len(colours) - 1)))
        cv2.line(bar, (0, y), (22, y), (0, 0, 0), 2)
        _text(bar, "px thr", (24, min(max(y + 4, 30), height - 22)), 0.35)
    return bar


def _triplet(ev: Evaluation, index: int, path: Path) -> None:
    """[image | anomaly map overlay | ground truth (only when the data set has masks)] + a colour bar,
    each panel titled in a white strip above it."""
    from ..runtime.overlay import overlay
    from ..runtime.preprocess import read_image, to_rgb_float

    frame = read_image(ev.paths[index])
    low, high = float(np.percentile(ev.maps, 1)), float(np.percentile(ev.maps, 99.9))
    over = overlay(frame, ev.maps[index], low, high)
    h, w = over.shape[:2]
    image = np.clip(to_rgb_float(frame)[:, :, ::-1], 0, 255).astype(np.uint8)
    panels = [("image", image), (f"anomaly map (score {ev.scores[index]:.4g})", over)]
    if ev.masks is not None:
        mask = cv2.resize(ev.masks[index].astype(np.uint8) * 255, (w, h), interpolation=cv2.INTER_NEAREST)
        panels.append(("ground truth" if mask.any() else "ground truth: no defect", cv2.cvtColor(mask, cv2.COLOR_GRAY2BGR)))
    body = np.concatenate([p for _, p in panels] + [colour_bar(h, low, high, ev.pixel_threshold)], axis=1)
    header = np.full((HEADER, body.shape[1], 3), 255, np.uint8)
    for i, (title, _) in enumerate(panels):
        _text(header, title, (6 + i * w, 19))
    cv2.imwrite(str(path), np.concatenate([header, body], axis=0))


IMAGE_NAMES = {
    "auroc": "Image AUROC (0.5 = chance, 1 = perfect)",
    "pr_auc": "Average precision (area under the precision–recall curve)",
    "f1_max": "Best F1 over all thresholds",
    "f1_max_threshold": "score where the best F1 is reached",
    "threshold": "Image threshold in use (NG if score > it)",
    "f1": "F1 at the threshold in use",
    "recall": "Defective images caught (recall)",
    "precision": "NG calls that are really defective (precision)",
    "fpr": "Good images rejected (false-reject rate)",
    "n_good": "good images", "n_defect": "defective images",
}
PIXEL_NAMES = {
    "pixel_auroc": "Pixel AUROC",
    "aupro": "AUPRO (per-defect overlap, up to 30 % false-positive pixels)",
    "pixel_threshold": "Pixel threshold (boxes are drawn above it)",
    "pixel_f1": "Pixel F1 at the pixel threshold",
    "pixel_recall": "Defect pixels above the pixel threshold (recall)",
    "pixel_precision": "Pixels above the pixel threshold that are defect (precision)",
    "pixel_fpr": "Good pixels above the pixel threshold",
}
RUN_NAMES = {"backend": "backend", "precision": "number format of the model (fp32 / fp16 / int8)",
             "skipped": "unreadable images skipped"}


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def _table(block: dict[str, Any], names: dict[str, str]) -> str:
    rows = "".join(f"<tr><td>{html.escape(names.get(k, k))}</td><td class='n'>{_value(v)}</td></tr>"
                   for k, v in block.items() if not isinstance(v, (dict, list)))
    return f"<table>{rows}</table>"


def defect_types(ev: Evaluation) -> list[str] | None:
    """The defect type of each image: its folder name in an MVTec layout (``test/<type>/x.png``), else None."""
    if ev.types is not None:
        return list(ev.types)
    parents = [Path(p).parent for p in ev.paths]
    if parents and all(q.parent.name == "test" for q in parents):
        return [q.name for q in parents]
    return None


def _confusion(ev: Evaluation) -> str:
    if ev.threshold is None:
        return "<p>No image threshold: no confusion counts (run ad-calibrate).</p>"
    ng = ev.scores > ev.threshold
    good, bad = ev.labels == 0, ev.labels == 1
    cell = lambda m: int(np.count_nonzero(m))  # noqa: E731
    return ("<table class='grid'><tr><th></th><th>scored OK</th><th>scored NG</th></tr>"
            f"<tr><th>good</th><td class='n'>{cell(good & ~ng)} (correct)</td><td class='n'>{cell(good & ng)} (false reject)</td></tr>"
            f"<tr><th>defective</th><td class='n'>{cell(bad & ~ng)} (missed)</td><td class='n'>{cell(bad & ng)} (caught)</td></tr>"
            "</table>")


def _per_type(ev: Evaluation) -> str:
    types = defect_types(ev)
    if types is None or len(set(types)) < 2:
        return ""
    rows = []
    for name in sorted(set(types), key=lambda t: (t != "good", t)):
        idx = np.array([i for i, t in enumerate(types) if t == name])
        scores = ev.scores[idx]
        caught = "-" if ev.threshold is None else int(np.count_nonzero(scores > ev.threshold))
        share = "-" if ev.threshold is None else f"{100 * caught / len(idx):.0f} %"
        verb = "rejected" if name == "good" else "caught"
        rows.append(f"<tr><td>{html.escape(name)}</td><td class='n'>{len(idx)}</td><td class='n'>{caught}</td>"
                    f"<td class='n'>{share} {verb if ev.threshold is not None else ''}</td>"
                    f"<td class='n'>{np.median(scores):.4g}</td><td class='n'>{scores.min():.4g}</td></tr>")
    return ("<h2>By defect type</h2><table class='grid'><tr><th>type</th><th>images</th><th>scored NG</th>"
            "<th>share</th><th>median score</th><th>lowest score</th></tr>" + "".join(rows) + "</table>")


CASE_TITLES = {"worst_good": "Good images with the highest scores (closest to a false reject)",
               "worst_defective": "Defective images with the lowest scores (closest to a miss)",
               "best_defective": "Defective images with the highest scores",
               "best_good": "Good images with the lowest scores"}


def _html(title: str, metrics: dict, cases: Sequence[tuple[str, int]], ev: Evaluation) -> str:
    image = _table(metrics["image"], IMAGE_NAMES)
    pixel = (f"<h2>Pixels (heatmaps against the ground-truth masks)</h2>{_table(metrics['pixel'], PIXEL_NAMES)}"
             if "pixel" in metrics else "<p>No ground-truth masks in this data set: no pixel metrics.</p>")
    run = f"<h2>Run</h2>{_table(metrics['run'], RUN_NAMES)}" if isinstance(metrics.get("run"), dict) else ""
    groups = []
    for key, heading in CASE_TITLES.items():
        figures = "".join(f"<figure><img src='{name}.png'><figcaption>{html.escape(ev.paths[i].name)} — score "
                          f"{ev.scores[i]:.4g}, {'defective' if ev.labels[i] else 'good'}</figcaption></figure>"
                          for name, i in cases if name.rsplit("_", 1)[0] == key)
        if figures:
            groups.append(f"<h3>{html.escape(heading)}</h3>{figures}")
    panels = "image | anomaly map | ground truth" if ev.masks is not None else "image | anomaly map"
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;margin:2em;max-width:1100px}img{max-width:100%}"
            "td,th{padding:3px 12px;text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}"
            "table.grid{border-collapse:collapse}table.grid td,table.grid th{border:1px solid #ccc}"
            "figure{margin:1em 0}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><h2>Images</h2>{image}<h2>At the threshold</h2>{_confusion(ev)}"
            f"{_per_type(ev)}{pixel}{run}<h2>Curves</h2><img src='curves.png'>"
            f"<h2>Cases [{panels}], colour bar: anomaly score</h2>{''.join(groups)}</body></html>")
