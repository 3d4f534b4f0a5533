"""Tiled vs resize-only inspection of high-resolution frames with small drawn defects (docs/tiling.md).

    python benchmarks/tiling.py [--frame 896] [--train 8] [--good 8] [--defect 12] [--tile 224] [--overlap 32]
                                [--json out.json]

Frames: ``--frame``² mosaics of defect-free mono ELPV cells (300 px each, as stored, random flips), so
the texture is real and the cells are at full resolution. Defective test frames get one small defect
each, drawn by ``anomedge.datasets.synthetic``'s drawers (scratch, spot, crack, missing piece) on a
128 px patch at a random place, with its exact pixel mask: a 1–2 px scratch or a 5–15 px spot, i.e. a
defect a 224 px resize of the whole frame shrinks by ``frame / 224``.

Both modes use the same detector, PatchCore with its defaults (EfficientNet-Lite0, 224 px input, blocks
2 + 4) fitted on the same ``--train`` good frames: *tiled* fits on their tiles (``--tile`` / ``--overlap``,
shared bank) and inspects every frame tile by tile; *resize* fits on the frames resized to 224 px (its
coreset fraction raised to 0.1 so its bank is not smaller than tiled's for lack of patches).
Reported per mode: image AUROC, pixel AUROC and AUPRO (FPR ≤ 0.3) of the maps at frame resolution
(``calibrate.metrics``), frames/s through the onnxruntime Inspector (the two modes interleaved frame by
frame), the peak of numpy / Python allocations while inspecting (tracemalloc) and the process's peak
RSS (getrusage; it includes both models). State the CPU and whether it was quiet.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
import tracemalloc
from pathlib import Path

import cv2
import numpy as np

from anomedge.calibrate.metrics import aupro, auroc, pixel_auroc
from anomedge.datasets.synthetic import DEFECTS, DRAWERS, _apply, _elpv_cells
from anomedge.export.fit import fit_and_export
from anomedge.runtime.evidence import frame_map
from anomedge.runtime.pipeline import Inspector
from anomedge.runtime.tiling import TilingSpec

CELL, PATCH = 300, 128


class _Patch:
    size = PATCH


def mosaic(cells: list[Path], size: int, rng: np.random.Generator) -> np.ndarray:
    """(size,size) uint8: cells at 300 px side by side (random cells, random flips), cropped to ``size``."""
    n = -(-size // CELL)
    rows = []
    for _ in range(n):
        row = []
        for _ in range(n):
            cell = cv2.imread(str(cells[int(rng.integers(len(cells)))]), cv2.IMREAD_GRAYSCALE)
            cell = cv2.resize(cell, (CELL, CELL), interpolation=cv2.INTER_AREA) if cell.shape != (CELL, CELL) else cell
            row.append(cell[:, ::-1] if rng.integers(2) else cell)
        rows.append(np.concatenate(row, axis=1))
    return np.ascontiguousarray(np.concatenate(rows, axis=0)[:size, :size])


def draw_defect(frame: np.ndarray, defect: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One small ``defect`` drawn on a random 128 px patch of ``frame`` → (image, mask bool (H,W))."""
    y, x = (int(rng.integers(0, s - PATCH)) for s in frame.shape)
    clean = frame[y:y + PATCH, x:x + PATCH]
    mask, delta = DRAWERS[defect](clean, rng, _Patch)
    out, full = frame.copy(), np.zeros(frame.shape, bool)
    out[y:y + PATCH, x:x + PATCH] = _apply(clean, mask, delta)
    full[y:y + PATCH, x:x + PATCH] = mask
    return out, full


def make_set(folder: Path, args) -> tuple[list[Path], list[np.ndarray], list[np.ndarray], np.ndarray]:
    cells = _elpv_cells()
    rng = np.random.default_rng(0)
    train = []
    (folder / "train").mkdir(parents=True)
    for i in range(args.train):
        path = folder / "train" / f"{i:03d}.png"
        cv2.imwrite(str(path), mosaic(cells, args.frame, rng))
        train.append(path)
    frames, masks, labels = [], [], []
    for i in range(args.good + args.defect):
        frame = mosaic(cells, args.frame, rng)
        if i >= args.good:
            frame, mask = draw_defect(frame, DEFECTS[i % len(DEFECTS)], rng)
        else:
            mask = np.zeros(frame.shape, bool)
        frames.append(frame)
        masks.append(mask)
        labels.append(int(i >= args.good))
    return train, frames, masks, np.array(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frame", type=int, default=896)
    parser.add_argument("--train", type=int, default=8)
    parser.add_argument("--good", type=int, default=8)
    parser.add_argument("--defect", type=int, default=12)
    parser.add_argument("--tile", type=int, default=224)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--max-tile-batch", type=int, default=16)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="anomedge-tiling-bench-") as tmp:
        tmp = Path(tmp)
        train, frames, masks, labels = make_set(tmp, args)
        modes = {"tiled": {"params": {}, "tiling": TilingSpec(args.tile, args.overlap)},
                 "resize": {"params": {"coreset_fraction": 0.1}, "tiling": None}}
        inspectors, fits = {}, {}
        for name, mode in modes.items():
            report = fit_and_export(train, "patchcore", mode["params"], tmp / name, holdout=0.0, progress=None,
                                    tiling=mode["tiling"])
            fits[name] = {"fit_s": round(report.fit_seconds, 1),
                          "bank_rows": report.artifact.metadata.scoring["bank_rows"]}
            inspectors[name] = Inspector(report.artifact, "onnxruntime", max_tile_batch=args.max_tile_batch)
        results = {name: {"scores": [], "maps": [], "seconds": 0.0, "peak_mib": 0.0} for name in modes}
        for frame in frames:  # interleaved frame by frame
            for name, inspector in inspectors.items():
                tracemalloc.start()
                start = time.perf_counter()
                out = inspector.inspect([frame])
                results[name]["seconds"] += time.perf_counter() - start
                peak = tracemalloc.get_traced_memory()[1] / 2**20
                tracemalloc.stop()
                results[name]["peak_mib"] = max(results[name]["peak_mib"], peak)
                results[name]["scores"].append(float(out.scores[0]))
                results[name]["maps"].append(frame_map(out.maps[0], frame.shape))
        for inspector in inspectors.values():
            inspector.close()
        rows = {}
        stack = np.stack(masks)
        for name, r in results.items():
            maps = np.stack(r["maps"])
            rows[name] = {"image_auroc": round(auroc(labels, np.array(r["scores"])), 4),
                          "pixel_auroc": round(pixel_auroc(stack, maps), 4),
                          "aupro": round(aupro(stack, maps), 4),
                          "frames_per_s": round(len(frames) / r["seconds"], 3),
                          "peak_alloc_mib": round(r["peak_mib"], 1), **fits[name]}
    rows["_setup"] = {"frame": args.frame, "train": args.train, "good": args.good, "defect": args.defect,
                      "tile": args.tile, "overlap": args.overlap, "max_tile_batch": args.max_tile_batch,
                      "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    print("| mode | image AUROC | pixel AUROC | AUPRO | frames/s | peak numpy alloc MiB | fit s | bank rows |")
    print("|---|---|---|---|---|---|---|---|")
    for name in modes:
        r = rows[name]
        print(f"| {name} | {r['image_auroc']} | {r['pixel_auroc']} | {r['aupro']} | {r['frames_per_s']} | "
              f"{r['peak_alloc_mib']} | {r['fit_s']} | {r['bank_rows']} |")
    print(json.dumps(rows["_setup"]))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
