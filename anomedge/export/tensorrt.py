"""``model.onnx`` → a plain TensorRT plan ``model.engine`` (TensorRT 10 / 11 Python API), recorded in metadata.

Precision comes from the ONNX itself: the network is always *strongly typed* (TensorRT 11 removed
the FP16/INT8 builder flags and implicit calibrators; TensorRT 10 supports the same path), so fp32
builds ``model.onnx``, fp16 the ``model.fp16.onnx`` variant and int8 the Q/DQ ``model.int8.onnx``
variant (create them with ``ad-quantize``). One optimisation profile covers the dynamic batch
(min/opt/max); a timing cache speeds up rebuilds; the workspace pool is capped. ``placement="graph"``
builds the merged ``model.graph.onnx`` (scoring inside the engine; fp32 only) instead.

The timing cache is per artifact (``timing.cache`` beside ``model.engine``, never hashed, never in
the parent folder). A cache TensorRT refuses (another version or GPU: ``set_timing_cache`` returns
False) is replaced by an empty one; a build that yields none writes none. ``model.engine`` is
written under a temporary name and renamed, and metadata is rewritten only after a complete build
(refused if metadata.json changed meanwhile), so a failed build leaves the artifact as it was.

``model.engine`` in metadata (``model.engine`` block): file, onnx file + sha256, TensorRT version,
GPU name + compute capability, precision, batch profile, and the equivalent ``trtexec`` command
(to build on a Jetson without Python). ``check_engine`` refuses a plan built from another ONNX, with
another TensorRT, or for another GPU, and says how to rebuild. Run as
``python -m anomedge.export.tensorrt ARTIFACT [--precision fp16]``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..artifact import Artifact
from ..errors import ArtifactError, BackendUnavailable, InputError
from ..runtime.backends.tensorrt import (ENGINE_FILE, INSTALL, check_cuda, check_engine, cudart,  # noqa: F401
                                         current_gpu, gpu_count, rebuild_command)
from ..runtime.precisions import PRECISIONS as BACKEND_PRECISIONS

TIMING_CACHE = "timing.cache"
PRECISIONS = BACKEND_PRECISIONS["tensorrt"]
PLACEMENTS = ("host", "graph")


@dataclass(frozen=True)
class EngineProfile:
    """The dynamic-batch optimisation profile and builder limits."""

    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 8
    workspace_mib: int = 1024

    def __post_init__(self):
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise InputError(f"batch profile {self.min_batch}/{self.opt_batch}/{self.max_batch}: expected 1 ≤ min ≤ opt ≤ max")


def onnx_file(artifact: Artifact, precision: str, placement: str = "host") -> str:
    """The ONNX the engine is built from: the precision variant, or the merged graph (fp32 only)."""
    if precision not in PRECISIONS:
        raise InputError(f"TensorRT precision '{precision}': expected one of {', '.join(PRECISIONS)}")
    if placement not in PLACEMENTS:
        raise InputError(f"TensorRT placement '{placement}': expected host or graph")
    if placement == "host":
        return artifact.variant(precision)
    graph = artifact.metadata.scoring.get("graph_model")
    if not graph:
        raise ArtifactError(f"{artifact.root}: no model.graph.onnx for placement graph; export with --placement graph")
    if precision != "fp32":
        raise InputError(f"placement graph builds {graph}, which exists in fp32 only; use --precision fp32")
    return graph


def trtexec_command(onnx_path: str, engine_path: str, input_name: str, height: int, width: int,
                    profile: EngineProfile, timing_cache: str | None = None) -> str:
    """The trtexec line that builds the same plan (strongly typed: precision from the ONNX)."""
    shape = lambda n: f"{input_name}:{n}x3x{height}x{width}"  # noqa: E731
    parts = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine_path}", "--stronglyTyped",
             f"--minShapes={shape(profile.min_batch)}", f"--optShapes={shape(profile.opt_batch)}",
             f"--maxShapes={shape(profile.max_batch)}", f"--memPoolSize=workspace:{profile.workspace_mib}M"]
    if timing_cache:
        parts.append(f"--timingCacheFile={timing_cache}")
    return " ".join(shlex.quote(p) for p in parts)


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailable(f"TensorRT is not installed: {INSTALL}") from exc
    return trt


def load_timing_cache(config, cache_path: Path):
    """The builder's timing cache, from ``cache_path`` when TensorRT accepts it, else a fresh one."""
    data = cache_path.read_bytes() if cache_path.is_file() else b""
    cache = config.create_timing_cache(data)
    if config.set_timing_cache(cache, False):
        return cache
    warnings.warn(f"{cache_path}: TensorRT refused this timing cache (another TensorRT or GPU); starting a new one")
    cache = config.create_timing_cache(b"")
    if not config.set_timing_cache(cache, False):
        raise BackendUnavailable("TensorRT refused an empty timing cache (see the TensorRT log above)")
    return cache


def make_builder(trt, logger, device: int):
    """``trt.Builder`` on GPU ``device``; BackendUnavailable in one line when it cannot be made."""
    count = gpu_count()  # names the CUDA error when there is no usable GPU
    if not 0 <= device < count:
        raise InputError(f"TensorRT device {device}: this machine has {count} GPU(s) (0..{count - 1})")
    check_cuda(cudart().cudaSetDevice(device))
    try:
        builder = trt.Builder(logger)
    except (TypeError, RuntimeError) as exc:  # pybind11 raises TypeError when the C++ builder is null
        raise BackendUnavailable(f"TensorRT could not create a builder on GPU {device}: "
                                 f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    if builder is None:
        raise BackendUnavailable(f"TensorRT could not create a builder on GPU {device} (see the TensorRT log)")
    return builder


def build_engine(artifact_dir: str | Path, precision: str = "fp32", profile: EngineProfile = EngineProfile(),
                 timing_cache: str | Path | None = None, device: int = 0, placement: str = "host") -> Path:
    """Build ``model.engine`` into the artifact and record it in metadata; returns the plan's path."""
    trt = import_tensorrt()
    root = Path(artifact_dir)
    artifact = Artifact.load(root)
    source = onnx_file(artifact, precision, placement)
    spec = artifact.metadata.input
    if not spec.dynamic_batch and profile.max_batch != 1:
        profile = EngineProfile(1, 1, 1, profile.workspace_mib)
    cache_path = Path(timing_cache) if timing_cache else root / TIMING_CACHE

    logger = trt.Logger(trt.Logger.WARNING)
    builder = make_builder(trt, logger, device)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(artifact.path(source))):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ArtifactError(f"TensorRT could not parse {source}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, profile.workspace_mib << 20)
    opt = builder.create_optimization_profile()
    dims = lambda n: (n, 3, spec.height, spec.width)  # noqa: E731
    opt.set_shape(spec.name, dims(profile.min_batch), dims(profile.opt_batch), dims(profile.max_batch))
    config.add_optimization_profile(opt)
    load_timing_cache(config, cache_path)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ArtifactError(f"TensorRT failed to build an engine from {source} (see the TensorRT log above)")

    gpu = current_gpu(device)
    record = {"file": ENGINE_FILE, "onnx": source, "onnx_sha256": artifact.metadata.files[source],
              "tensorrt": trt.__version__, "gpu": gpu["name"], "compute_capability": gpu["compute_capability"],
              "precision": precision, "placement": placement, "strongly_typed": True,
              "batch": [profile.min_batch, profile.opt_batch, profile.max_batch], "workspace_mib": profile.workspace_mib,
              "trtexec": trtexec_command(source, ENGINE_FILE, spec.name, spec.height, spec.width, profile, TIMING_CACHE)}
    tmp = root / f".{ENGINE_FILE}.tmp"
    try:  # the plan is complete before it replaces model.engine; metadata names its hash in the same edit
        with Artifact.edit(root) as edit:
            tmp.write_bytes(bytes(plan))
            os.replace(tmp, root / ENGINE_FILE)
            edit.add_file(ENGINE_FILE)
            edit.meta["model"]["engine"] = record
    finally:
        tmp.unlink(missing_ok=True)
    cache = config.get_timing_cache()
    if cache is None:
        warnings.warn("TensorRT returned no timing cache; the next build starts without one")
    else:
        cache_path.write_bytes(bytes(cache.serialize()))
    return root / ENGINE_FILE


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m anomedge.export.tensorrt``."""
    parser = argparse.ArgumentParser(prog="python -m anomedge.export.tensorrt", description=__doc__.splitlines()[0])
    parser.add_argument("artifact")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32")
    parser.add_argument("--batch", default="1,1,8", help="min,opt,max batch of the profile")
    parser.add_argument("--workspace-mib", type=int, default=1024)
    parser.add_argument("--timing-cache", default=None, help=f"default: ARTIFACT/{TIMING_CACHE}")
    parser.add_argument("--placement", choices=PLACEMENTS, default="host",
                        help="graph: build model.graph.onnx (scoring inside the engine)")
    parser.add_argument("--device", type=int, default=0, help="GPU index")
    parser.add_argument("--print-trtexec", action="store_true", help="only print the equivalent trtexec command")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        lo, opt, hi = (int(v) for v in args.batch.split(","))
        profile = EngineProfile(lo, opt, hi, args.workspace_mib)
        if args.print_trtexec:
            artifact = Artifact.load(args.artifact)
            spec = artifact.metadata.input
            print(trtexec_command(str(artifact.path(onnx_file(artifact, args.precision, args.placement))),
                                  str(Path(args.artifact) / ENGINE_FILE), spec.name, spec.height, spec.width, profile,
                                  args.timing_cache))
            return 0
        print(build_engine(args.artifact, args.precision, profile, args.timing_cache, args.device, args.placement))
    except (ValueError, InputError, ArtifactError, BackendUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
