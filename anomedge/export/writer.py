"""Fitted detector → artifact folder: ``model.onnx`` + fitted arrays + ``metadata.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..artifact import Artifact, Metadata, write_artifact
from ..models.detector import Detector
from .onnx import export_onnx


def write_detector(detector: Detector, out: str | Path, thresholds: dict[str, Any] | None = None) -> Artifact:
    """Export ``detector``'s graph and arrays into ``out`` (created) and return the loaded artifact."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    blocks = detector.metadata_blocks()
    export_onnx(detector.graph(), blocks["input"], out / "model.onnx", detector.output_names)
    extra = detector.write_files(out)
    detector.write_training_record(out)
    metadata = Metadata(detector=detector.name, input=blocks["input"], outputs=blocks["outputs"],
                        scoring=blocks["scoring"], postprocess=blocks["postprocess"], model=blocks["model"],
                        thresholds=thresholds or {}, files={name: "" for name in ["model.onnx", *extra]})
    return write_artifact(out, metadata, detector.arrays())
