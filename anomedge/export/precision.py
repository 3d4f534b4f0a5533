"""Reduced-precision variants of ``model.onnx``, stored beside it and hashed like every artifact file.

- ``fp16``: float16 weights and compute, float32 inputs/outputs (Cast at the boundaries), via
  onnxruntime's float16 converter; its default block list of ops unsafe in half precision always
  stays float32, and nodes named in ``exclude`` too.
- ``int8``: static quantisation into Q/DQ form (onnxruntime.quantization.quantize_static) from
  calibration images, per-channel weights, MinMax / Entropy (KL over a 512-bin histogram) /
  Percentile calibration; nodes named in ``exclude`` stay float (mixed precision). The Q/DQ pairs
  are *symmetric* (every zero point 0, activations and weights) and biases stay float32 (no int32
  bias DequantizeLinear): that is the only Q/DQ form TensorRT 10/11 accepts for INT8, so the same
  file builds a strongly typed TensorRT engine and runs under onnxruntime (``INT8_OPTIONS``).

Unknown ``exclude`` names are refused; a failure leaves the artifact folder as it was.

``add_variant(artifact_dir, precision, …)`` writes ``model.<precision>.onnx``, adds its sha256 to
``files`` and ``{precision: file}`` to ``model.variants`` in metadata.json (atomic rewrite).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Sequence

from ..artifact import Artifact
from ..errors import InputError
from ..runtime.preprocess import preprocess, read_image

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
# quantize_static's defaults are asymmetric activations (non-zero zero points) and int32-quantised
# biases; TensorRT refuses both (and onnxruntime's TensorRT provider then silently runs those nodes
# on CUDA). These extra_options give symmetric activations and weights and float biases.
INT8_OPTIONS = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False}
MIN_CALIBRATION_IMAGES = 32


def check_nodes(model_path: Path, names: Sequence[str], shown: str = "model.onnx") -> None:
    """InputError naming any of ``names`` that is not a node of the graph at ``model_path`` (a typo
    would silently quantise everything); ``shown`` is the file name the message gives the user."""
    if not names:
        return
    import onnx

    graph = {n.name for n in onnx.load(str(model_path)).graph.node}
    unknown = [n for n in names if n not in graph]
    if unknown:
        sample = ", ".join(quantizable_nodes(model_path)[:3])
        raise InputError(f"{shown}: no node named {', '.join(unknown)}; --exclude takes node names of {shown} "
                         f"(e.g. {sample}; all of them: anomedge.export.precision.quantizable_nodes)")


def to_fp16(src: Path, dst: Path, keep_float: Sequence[str] = ()) -> None:
    """float16 weights/compute, float32 inputs/outputs. The converter's default op block list (ops
    unsafe in half precision) always applies; ``keep_float`` names extra nodes to keep float32."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    check_nodes(src, keep_float, src.name)
    model = onnx.load(str(src))
    half = convert_float_to_float16(model, keep_io_types=True, node_block_list=list(keep_float) or None)
    onnx.save(half, str(dst))


def to_int8(src: Path, dst: Path, artifact: Artifact, calibration: Sequence[Path], method: str = "minmax",
            exclude: Sequence[str] = (), per_channel: bool = True) -> None:
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in CALIBRATION_METHODS:
        raise InputError(f"calibration method '{method}': expected one of {', '.join(CALIBRATION_METHODS)}")
    spec = artifact.metadata.input
    frames = []
    for path in calibration:
        try:
            frames.append(read_image(path))
        except InputError as exc:
            import warnings

            warnings.warn(f"calibration image skipped: {exc}")
    if not frames:
        raise InputError("no readable calibration images for INT8: pass --calib with good images")
    if len(frames) < MIN_CALIBRATION_IMAGES:
        import warnings

        warnings.warn(f"INT8 calibration on {len(frames)} images; {MIN_CALIBRATION_IMAGES}+ recommended")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(frames)

        def get_next(self):
            frame = next(self.items, None)
            return None if frame is None else {spec.name: preprocess([frame], spec)}

    # Intermediate models (pre-processed, augmented for calibration) live in a scratch folder, never
    # beside the artifact's hashed files.
    calibrate_method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                        "percentile": CalibrationMethod.Percentile}[method]
    with tempfile.TemporaryDirectory(prefix="anomedge-int8-") as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        check_nodes(prepared, exclude, src.name)
        cache = entropy_ranges(prepared, Reader(), Path(scratch)) if method == "entropy" else None
        quantize_static(str(prepared), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=calibrate_method, nodes_to_exclude=list(exclude),
                        calibration_cache_path=cache, extra_options=dict(INT8_OPTIONS))


ENTROPY_BINS, ENTROPY_QUANTIZED_BINS = 512, 128


def entropy_ranges(model: Path, reader, scratch: Path) -> Path:
    """Entropy (KL) activation ranges as an onnxruntime calibration cache file.

    ``quantize_static`` builds its entropy calibrator with 128 histogram bins for 128 quantised bins,
    which leaves one candidate range: the full one, i.e. exactly MinMax (measured: identical scales).
    Here the histogram has 512 bins searched down to 128 (192 candidate ranges per tensor); TensorRT's
    2048 bins cost 5× the time in onnxruntime's Python search (50 s vs 10 s on the 64×64 test model)."""
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    calibrator = create_calibrator(model, [], augmented_model_path=str(scratch / "augmented.onnx"),
                                   calibrate_method=CalibrationMethod.Entropy,
                                   extra_options={"num_bins": ENTROPY_BINS,
                                                  "num_quantized_bins": ENTROPY_QUANTIZED_BINS})
    calibrator.collect_data(reader)
    cache = scratch / "entropy_ranges.json"
    save_tensors_data(calibrator.compute_data(), cache)
    return cache


VARIANTS: dict[str, Callable[..., None]] = {"fp16": to_fp16, "int8": to_int8}


def add_variant(artifact_dir: str | Path, precision: str, calibration: Sequence[Path] = (), method: str = "minmax",
                exclude: Sequence[str] = ()) -> Path:
    """Write ``model.<precision>.onnx`` and register it (hash + ``model.variants``) in metadata."""
    if precision not in VARIANTS:
        raise InputError(f"precision '{precision}': expected one of {', '.join(VARIANTS)}")
    root = Path(artifact_dir)
    # Written under a temporary name and renamed only once complete, inside an edit that refuses a
    # metadata.json changed meanwhile: a failure leaves an existing variant and metadata.json as they were.
    with Artifact.edit(root) as edit:
        artifact = edit.artifact
        src, dst = artifact.path("model.onnx"), root / f"model.{precision}.onnx"
        tmp = root / f".{dst.name}.tmp"
        try:
            if precision == "int8":
                to_int8(src, tmp, artifact, calibration, method, exclude)
            else:
                to_fp16(src, tmp, exclude)
            os.replace(tmp, dst)
        finally:
            tmp.unlink(missing_ok=True)
        edit.add_file(dst.name)
        edit.meta["model"].setdefault("variants", {})[precision] = dst.name
        params = {"exclude": list(exclude)}
        if precision == "int8":
            params.update(method=method, calibration_images=len(calibration))
        edit.meta["model"].setdefault("variant_params", {})[precision] = params
        from ..artifact import Metadata
        from ..runtime.verify import measure_tolerance

        # ad-verify's tolerance for this variant: measured now on the golden frames (None without them).
        params["verify_tolerance"] = measure_tolerance(Artifact(root, Metadata.from_dict(edit.meta)), precision)
    return dst


def quantizable_nodes(model_path: Path) -> list[str]:
    """Names of Conv/MatMul/Gemm nodes (the candidates to keep in float for mixed INT8)."""
    import onnx

    return [n.name for n in onnx.load(str(model_path)).graph.node if n.op_type in ("Conv", "MatMul", "Gemm")]


