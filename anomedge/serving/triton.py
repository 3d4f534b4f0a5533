"""An artifact → a Triton model repository (``ad-triton``).

Two forms of one contract, so that a client (``ad-run --backend triton``) cannot tell them apart:
input ``<input.name>`` (N,3,H,W) FP32 — the preprocessed batch, made on the camera box — and outputs
``patch_scores`` (N,h,w) FP32 and ``anomaly_map`` (N,H,W) FP32. The image score (the metadata's
reduction) and every threshold are applied by the client from ``metadata.json``; none is in a graph.

- ``python``: Triton's python backend running the anomedge runtime itself (``triton_model.py`` as
  ``model.py``, the artifact folder copied beside it and sha256-verified at load). Works on any
  Triton, CPU-only included; its Python needs ``anomedge`` (numpy < 2 for Triton ≤ 2.5x, issue #8301).
- ``onnx``: the whole detector as one ONNX graph (backbone + kNN / Mahalanobis head + map, built by
  ``scoring.graph``) for Triton's onnxruntime backend (optionally its TensorRT accelerator),
  with the artifact's ``metadata.json`` beside it.

Layout: ``REPO/<name>/config.pbtxt`` + ``REPO/<name>/<version>/…`` (python form; ``<name>_onnx`` for
the native one). ``config.pbtxt`` carries ``max_batch_size``, ``dynamic_batching``, ``instance_group``,
a ``version_policy`` and parameters ``anomedge_artifact_sha256`` (the client refuses a server whose
model is not its artifact) and ``anomedge_model_sha256`` (the served file).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..artifact import METADATA, Artifact, sha256_file
from ..errors import ArtifactError, InputError

OUTPUTS = ("patch_scores", "anomaly_map")
FORMS = ("python", "onnx")
SHA_PARAMETER = "anomedge_artifact_sha256"
MODEL_SHA_PARAMETER = "anomedge_model_sha256"
DEFAULT_NAME = "anomedge"
ACCELERATORS = ("none", "tensorrt")


@dataclass(frozen=True)
class ServingOptions:
    """Triton scheduling: ``max_batch`` (max_batch_size), ``instances`` per device, ``queue_delay_us``
    (how long the dynamic batcher waits to fill a batch), ``kind`` KIND_CPU | KIND_GPU."""

    max_batch: int = 8
    instances: int = 1
    queue_delay_us: int = 2000
    kind: str = "KIND_CPU"

    def check(self) -> None:
        if not 1 <= self.max_batch <= 1024:
            raise InputError(f"--max-batch {self.max_batch}: expected 1 … 1024")
        if not 1 <= self.instances <= 64:
            raise InputError(f"--instances {self.instances}: expected 1 … 64")
        if not 0 <= self.queue_delay_us <= 1_000_000:
            raise InputError(f"--queue-delay-us {self.queue_delay_us}: expected 0 … 1000000")


def _dims(values) -> str:
    return "[ " + ", ".join(str(int(v)) for v in values) + " ]"


def _tensor(name: str, dims) -> str:
    return f'  {{\n    name: "{name}"\n    data_type: TYPE_FP32\n    dims: {_dims(dims)}\n  }}'


def model_config(name: str, engine: str, input_name: str, input_dims, output_dims: dict[str, tuple[int, ...]],
                 options: ServingOptions, parameters: dict[str, str], accelerator: str = "none") -> str:
    """``config.pbtxt`` text. ``engine``: 'python' (backend) or 'onnxruntime_onnx' (platform); dims exclude the batch."""
    head = 'backend: "python"' if engine == "python" else f'platform: "{engine}"'
    preferred = sorted({b for b in (options.max_batch // 2, options.max_batch) if b >= 1})
    lines = [
        f'name: "{name}"', head, f"max_batch_size: {options.max_batch}",
        "input [\n" + _tensor(input_name, input_dims) + "\n]",
        "output [\n" + ",\n".join(_tensor(n, output_dims[n]) for n in OUTPUTS) + "\n]",
        "dynamic_batching {\n"
        f"  preferred_batch_size: {_dims(preferred)}\n"
        f"  max_queue_delay_microseconds: {options.queue_delay_us}\n}}",
        f"instance_group [\n  {{\n    count: {options.instances}\n    kind: {options.kind}\n  }}\n]",
        "version_policy: { latest: { num_versions: 1 } }",
    ]
    if accelerator == "tensorrt":
        lines.append('optimization { execution_accelerators { gpu_execution_accelerator: [ { name: "tensorrt" '
                     'parameters { key: "precision_mode" value: "FP32" } } ] } }')
    for key, value in parameters.items():
        lines.append(f'parameters: {{\n  key: "{key}"\n  value: {{ string_value: "{value}" }}\n}}')
    return "\n".join(lines) + "\n"


def parse_config(text: str):
    """Parse ``config.pbtxt`` text with Triton's own ModelConfig protobuf (from tritonclient); raises
    InputError on a field or value the schema does not have. Needs ``pip install 'tritonclient[grpc]'``."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError as exc:
        raise InputError("checking config.pbtxt needs tritonclient[grpc]: pip install 'anomedge[triton]'") from exc
    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise InputError(f"config.pbtxt does not match Triton's ModelConfig schema: {exc}") from exc


def _schema_installed() -> bool:
    """Whether Triton's ModelConfig protobuf (tritonclient[grpc]) is importable: the check runs where it is."""
    try:
        return importlib.util.find_spec("tritonclient.grpc") is not None
    except ModuleNotFoundError:
        return False


def _output_dims_from_runtime(artifact: Artifact) -> dict[str, tuple[int, ...]]:
    """Run one zero frame through the local runtime: the exact (h,w) of patch_scores and (H,W) of the map."""
    from ..runtime.pipeline import Inspector

    spec = artifact.metadata.input
    with Inspector(artifact, "onnxruntime", threads=1) as inspector:
        batch = np.zeros((1, 3, spec.height, spec.width), np.float32)
        patch = np.asarray(inspector.stages.score(inspector.stages.infer(batch)))
    return {"patch_scores": tuple(patch.shape[1:]), "anomaly_map": (spec.height, spec.width)}


def _python_form(artifact: Artifact, version_dir: Path, options: ServingOptions,
                 threads: int) -> tuple[str, dict[str, tuple[int, ...]], dict[str, str]]:
    """The artifact + ``model.py`` into ``version_dir``; → (engine, output dims, config parameters)."""
    from . import triton_model

    for rel in (METADATA, *artifact.metadata.files):  # the artifact exactly: listed files + metadata
        target = version_dir / "artifact" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(artifact.root / rel, target)
    model_py = version_dir / "model.py"
    shutil.copyfile(triton_model.__file__, model_py)
    params = {"threads": str(threads), MODEL_SHA_PARAMETER: sha256_file(model_py)}
    return "python", _output_dims_from_runtime(artifact), params


def _onnx_form(artifact: Artifact, version_dir: Path, options: ServingOptions,
               threads: int) -> tuple[str, dict[str, tuple[int, ...]], dict[str, str]]:
    """The merged graph (chunked for ``options.max_batch``) + metadata.json into ``version_dir``."""
    try:
        import onnx

        from ..scoring.graph import build_head, merge_with_backbone
    except ImportError as exc:
        raise InputError("the onnx form builds one graph with onnx: pip install 'anomedge[export]'") from exc
    kind = artifact.metadata.scoring.get("graph_of", artifact.metadata.scoring.get("kind"))
    if kind not in ("knn", "mahalanobis"):
        raise InputError(f"{artifact.root}: scoring kind '{kind}' has no graph head (knn and mahalanobis do); "
                         "serve it with --form python")
    if not artifact.metadata.input.dynamic_batch and options.max_batch > 1:
        raise InputError(f"{artifact.root} was exported for batch 1: use --max-batch 1 or re-export")
    head = build_head(artifact, with_map=True, max_batch=options.max_batch)
    model = merge_with_backbone(onnx.load(str(artifact.path("model.onnx"))), head)
    onnx.checker.check_model(model)
    dst = version_dir / "model.onnx"
    onnx.save(model, str(dst))
    shutil.copyfile(artifact.root / METADATA, version_dir / METADATA)
    dims = {o.name: tuple(d.dim_value for d in o.type.tensor_type.shape.dim[1:]) for o in model.graph.output}
    if set(dims) != set(OUTPUTS) or any(v <= 0 for shape in dims.values() for v in shape):
        raise ArtifactError(f"merged graph outputs {dims}: expected {OUTPUTS} with fixed (h,w) / (H,W)")
    return "onnxruntime_onnx", dims, {MODEL_SHA_PARAMETER: sha256_file(dst)}


FORM_WRITERS = {"python": _python_form, "onnx": _onnx_form}
FORM_SUFFIX = {"python": "", "onnx": "_onnx"}


def write_repository(artifact_dir: str | Path, out: str | Path, forms: tuple[str, ...] = ("python",),
                     options: ServingOptions = ServingOptions(), version: int = 1, name: str = DEFAULT_NAME,
                     threads: int = 0, accelerator: str = "none", onnx_kind: str = "KIND_GPU") -> dict[str, Path]:
    """Write one Triton model per form into ``out``; returns {form: model folder}. An existing version
    folder is refused (Triton versions are immutable: give the next ``version``)."""
    options.check()
    if version < 1:
        raise InputError(f"--version {version}: Triton versions are positive integers")
    if accelerator not in ACCELERATORS:
        raise InputError(f"--accelerator {accelerator}: expected one of {', '.join(ACCELERATORS)}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", name):
        raise InputError(f"--name '{name}': expected letters, digits, '_', '.', '-' (a Triton model folder name)")
    unknown = [f for f in forms if f not in FORMS]
    if unknown:
        raise InputError(f"--form {unknown[0]}: expected one of {', '.join(FORMS)}, both")
    artifact = Artifact.load(artifact_dir)
    spec = artifact.metadata.input
    written = {}
    for form in forms:
        model_name = name + FORM_SUFFIX[form]
        model_dir = Path(out) / model_name
        version_dir = model_dir / str(version)
        if version_dir.exists():
            raise InputError(f"{version_dir} exists: Triton model versions are immutable; pass --version {version + 1}")
        version_dir.mkdir(parents=True)
        try:
            form_options = options if form == "python" else dataclasses.replace(options, kind=onnx_kind)
            engine, dims, params = FORM_WRITERS[form](artifact, version_dir, form_options, threads)
            params = {SHA_PARAMETER: artifact.sha256, **params}
            text = model_config(model_name, engine, spec.name, (3, spec.height, spec.width), dims, form_options,
                                params, accelerator if form == "onnx" else "none")
            if _schema_installed():
                parse_config(text)
        except BaseException:
            shutil.rmtree(version_dir, ignore_errors=True)
            raise
        (model_dir / "config.pbtxt").write_text(text)
        written[form] = model_dir
    return written
