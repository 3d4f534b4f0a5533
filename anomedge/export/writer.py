"""Fitted detector → artifact folder: ``model.onnx`` + fitted arrays + what the edge runs, hashed, + ``metadata.json``.

Everything the runtime executes is produced here, on the workstation, and shipped hashed, so the edge
needs only the base install (numpy, OpenCV, onnxruntime): ``knn.onnx`` (the ``onnxruntime`` host kNN
kernel's chunked search, ``scoring.graph.build_knn_search``), ``model.graph.onnx`` (placement graph,
``add_graph_placement``) and the golden frames ``ad-verify`` checks on the target (``write_golden``).

Run as ``python -m anomedge.export.writer ARTIFACT [--golden IMAGE ...]`` to add the missing
``knn.onnx`` (and golden frames from good images) to an artifact exported before they were shipped.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..artifact import Artifact, Metadata, write_artifact
from ..models.detector import Detector
from ..runtime.verify import GOLDEN_FILES
from ..scoring.heads import KNN_GRAPH
from .onnx import export_onnx

GRAPH_FILE = "model.graph.onnx"
GOLDEN_MAX = 8
GOLDEN_BYTES = 1 << 20  # frames (uint8) + maps (float32) together stay under ~1 MiB: fewer frames at high resolution
log = logging.getLogger("anomedge")


def write_detector(detector: Detector, out: str | Path, thresholds: dict[str, Any] | None = None,
                   golden_images: Sequence[Path] = ()) -> Artifact:
    """Export ``detector``'s graph, arrays and (kNN) ``knn.onnx`` into ``out`` (created); with
    ``golden_images`` also the golden frames. Returns the loaded artifact."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    blocks = detector.metadata_blocks()
    export_onnx(detector.graph(), blocks["input"], out / "model.onnx", detector.output_names)
    extra = detector.write_files(out)
    detector.write_training_record(out)
    arrays = detector.arrays()
    shipped = []
    if blocks["scoring"].get("kind") == "knn":
        _save_knn_graph(arrays["bank.npy"], int(blocks["scoring"].get("k", 1)), out / KNN_GRAPH)
        shipped.append(KNN_GRAPH)
    metadata = Metadata(detector=detector.name, input=blocks["input"], outputs=blocks["outputs"],
                        scoring=blocks["scoring"], postprocess=blocks["postprocess"], model=blocks["model"],
                        thresholds=thresholds or {},
                        files={name: "" for name in ["model.onnx", *extra, *shipped]})
    artifact = write_artifact(out, metadata, arrays)
    if golden_images:
        write_golden(out, golden_images)
        artifact = Artifact.load(out)
    return artifact


def _save_knn_graph(bank: np.ndarray, k: int, dst: Path) -> None:
    import onnx

    from ..scoring.graph import build_knn_search

    model = build_knn_search(bank, k)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))


def _register(root: Path, files: Sequence[str], **model_or_scoring: dict[str, Any]) -> None:
    """Hash ``files`` (already in ``root``) into metadata.json and merge the given blocks' keys."""
    with Artifact.edit(root) as edit:
        for name in files:
            edit.add_file(name)
        for block, values in model_or_scoring.items():
            edit.meta[block].update(values)


def add_knn_graph(artifact_dir: str | Path) -> Path:
    """Write and hash ``knn.onnx`` for a kNN artifact that lacks it (exported before it was shipped)."""
    root = Path(artifact_dir)
    artifact = Artifact.load(root)
    if artifact.metadata.scoring.get("kind") != "knn":
        raise ValueError(f"{root}: scoring kind {artifact.metadata.scoring.get('kind')}: only kNN artifacts have {KNN_GRAPH}")
    _save_knn_graph(artifact.array("bank.npy"), int(artifact.metadata.scoring.get("k", 1)), root / KNN_GRAPH)
    _register(root, [KNN_GRAPH])
    return root / KNN_GRAPH


def golden_frames(images: Sequence[Path], height: int, width: int, count: int, seed: int = 0) -> np.ndarray:
    """(count,H,W,3) uint8 BGR frames at model resolution from good ``images`` (cycled if fewer); every
    second frame gets a synthetic defect (an inverted rectangle) so that both decisions are exercised."""
    import cv2

    from ..runtime.preprocess import read_image

    rng = np.random.default_rng(seed)
    out = np.empty((count, height, width, 3), np.uint8)
    for i in range(count):
        frame = read_image(images[i % len(images)])
        if frame.dtype == np.uint16:
            frame = np.round(frame.astype(np.float32) * (255.0 / 65535.0)).astype(np.uint8)
        if frame.ndim == 2 or frame.shape[2] == 1:
            frame = cv2.cvtColor(frame.reshape(frame.shape[:2]), cv2.COLOR_GRAY2BGR)
        elif frame.shape[2] == 4:
            frame = cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
        frame = cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)
        if i % 2:
            h, w = max(2, height // 5), max(2, width // 5)
            y, x = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
            frame[y:y + h, x:x + w] = 255 - frame[y:y + h, x:x + w]
        out[i] = frame
    return out


def write_golden(artifact_dir: str | Path, images: Sequence[Path], reference: str = "torch") -> list[Path]:
    """Write the golden frames from good ``images`` with the ``reference`` backend's scores and maps
    (``runtime.verify``); hash them and record ``model.golden``."""
    from ..runtime.pipeline import Inspector
    from ..runtime.verify import run_golden

    root = Path(artifact_dir)
    artifact = Artifact.load(root)
    spec = artifact.metadata.input
    per_frame = spec.height * spec.width * (3 + 4)
    count = int(np.clip(GOLDEN_BYTES // per_frame, 2, GOLDEN_MAX))
    frames = golden_frames(list(images), spec.height, spec.width, count)
    with Inspector(artifact, reference, placement="host") as inspector:
        scores, maps = run_golden(inspector, list(frames))
    values = {"frames": frames, "scores": scores.astype(np.float32), "maps": maps.astype(np.float32)}
    for key, name in GOLDEN_FILES.items():
        np.save(root / name, np.ascontiguousarray(values[key]), allow_pickle=False)
    _register(root, list(GOLDEN_FILES.values()),
              model={"golden": {**GOLDEN_FILES, "reference": reference, "n": count}})
    return [root / name for name in GOLDEN_FILES.values()]


def add_graph_placement(artifact_dir: str | Path, merged: bool = True, with_map: bool = False, **options) -> Path:
    """Write ``model.graph.onnx`` (backbone + head, or the head alone with ``merged=False``) into the
    artifact, hash it and record ``scoring.graph_model``. Placement stays as recorded (see ``ad-bench``)."""
    import onnx

    from ..scoring.graph import build_head, merge_with_backbone

    root = Path(artifact_dir)
    artifact = Artifact.load(root)
    head = build_head(artifact, with_map=with_map, **options)
    model = merge_with_backbone(onnx.load(str(artifact.path("model.onnx"))), head) if merged else head
    onnx.checker.check_model(model)
    dst = root / (GRAPH_FILE if merged else "head.onnx")
    onnx.save(model, str(dst))
    _register(root, [dst.name], scoring={"graph_model" if merged else "graph_head": dst.name})
    return dst


def main(argv: Sequence[str] | None = None) -> None:
    """Add what an older artifact lacks: ``knn.onnx`` (kNN) and, with ``--golden``, golden frames."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m anomedge.export.writer", description=main.__doc__)
    parser.add_argument("artifact")
    parser.add_argument("--golden", nargs="+", default=[], metavar="IMAGE", help="good images for the golden frames")
    args = parser.parse_args(argv)
    artifact = Artifact.load(args.artifact)
    if artifact.metadata.scoring.get("kind") == "knn" and not artifact.has(KNN_GRAPH):
        print(f"wrote {add_knn_graph(args.artifact)}")
    if args.golden:
        print("wrote " + ", ".join(str(p) for p in write_golden(args.artifact, [Path(p) for p in args.golden])))


if __name__ == "__main__":
    main()
