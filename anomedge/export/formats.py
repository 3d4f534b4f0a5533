"""The one table of export formats: name, file, where it runs, allowed options, exporter.

Every exporter takes the artifact folder (already holding ``model.onnx`` from ``write_detector``)
plus keyword options and returns the path it wrote, recording the file in metadata. The CLI reads
this table for ``--format onnx,engine,openvino`` and checks options with ``check_options``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import InputError
from ..runtime.precisions import PRECISIONS, VARIANT_PRECISIONS


def _onnx(artifact_dir: str | Path, precision: str = "fp32", calib=(), method: str = "minmax", exclude=()) -> Path:
    """fp32: the exported model.onnx; fp16/int8: the variant (export.precision)."""
    if precision == "fp32":
        return Path(artifact_dir) / "model.onnx"
    from .precision import add_variant

    return add_variant(artifact_dir, precision, calib, method, exclude)


def _engine(artifact_dir: str | Path, precision: str = "fp32", batch: tuple[int, int, int] = (1, 1, 8),
            workspace_mib: int = 1024, timing_cache: str | None = None, calib=(), placement: str = "host",
            device: int = 0) -> Path:
    """The engine of ``precision``; a missing fp16 / int8 ONNX variant is made first (int8 from ``calib``)."""
    from ..artifact import Artifact
    from .tensorrt import EngineProfile, build_engine

    if precision != "fp32" and precision not in Artifact.load(artifact_dir).metadata.model.get("variants", {}):
        if precision == "int8" and not calib:
            raise InputError("an int8 engine is built from the int8 ONNX variant: pass calibration images "
                             "(ad-export calibrates on the training images; or run ad-quantize first)")
        _onnx(artifact_dir, precision, calib)
    return build_engine(artifact_dir, precision, EngineProfile(*batch, workspace_mib), timing_cache, device, placement)


def _openvino(artifact_dir: str | Path, precision: str = "fp32") -> Path:
    from .openvino import export_openvino

    return export_openvino(artifact_dir, precision)


@dataclass(frozen=True)
class ExportFormat:
    name: str
    suffix: str
    cpu: bool
    gpu: bool
    options: tuple[str, ...]
    precisions: tuple[str, ...]
    exporter: Callable[..., Path]
    backend: str  # the runtime backend that runs it


FORMATS: dict[str, ExportFormat] = {f.name: f for f in (
    ExportFormat("onnx", ".onnx", cpu=True, gpu=True, options=("precision", "calib", "method", "exclude"),
                 precisions=("fp32", *VARIANT_PRECISIONS), exporter=_onnx, backend="onnxruntime"),
    ExportFormat("engine", ".engine", cpu=False, gpu=True,
                 options=("precision", "batch", "workspace_mib", "timing_cache", "calib", "placement", "device"),
                 precisions=PRECISIONS["tensorrt"], exporter=_engine, backend="tensorrt"),
    # bf16 is an OpenVINO inference hint, not a file: the IR is written in fp32 or fp16 weights.
    ExportFormat("openvino", ".xml", cpu=True, gpu=True, options=("precision",),
                 precisions=tuple(p for p in PRECISIONS["openvino"] if p != "bf16"), exporter=_openvino,
                 backend="openvino"),
)}


def parse_formats(spec: str) -> list[ExportFormat]:
    """'onnx,engine' → the table rows; InputError naming the known formats otherwise."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not names:
        raise InputError(f"--format {spec!r}: expected a comma list of {', '.join(FORMATS)}")
    return [FORMATS[n] for n in names]


def check_options(fmt: ExportFormat, options: dict[str, Any]) -> None:
    extra = sorted(set(options) - set(fmt.options))
    if extra:
        raise InputError(f"format {fmt.name} does not take {', '.join(extra)}; it takes {', '.join(fmt.options)}")
    precision = options.get("precision", "fp32")
    if precision not in fmt.precisions:
        raise InputError(f"format {fmt.name} precision '{precision}': expected one of {', '.join(fmt.precisions)}")


def export(artifact_dir: str | Path, fmt: str | ExportFormat, **options: Any) -> Path:
    """Run one format's exporter after checking its options."""
    row = fmt if isinstance(fmt, ExportFormat) else parse_formats(fmt)[0]
    check_options(row, options)
    return row.exporter(artifact_dir, **options)
