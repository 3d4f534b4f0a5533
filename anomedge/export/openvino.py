"""``model.onnx`` → OpenVINO IR (``model.xml`` + ``model.bin``) in the artifact: no ONNX conversion at load.

``export_openvino(dir, precision)``: fp32 keeps float32 weights, fp16 compresses them to float16
(``compress_to_fp16``; inference precision is still chosen at load, see the OpenVINO backend).
Both files are hashed into metadata and recorded as ``model.openvino = {"file", "precision"}``;
run with ``--backend openvino --model-file model.xml``.
"""

from __future__ import annotations

from pathlib import Path

from ..artifact import Artifact
from ..errors import BackendUnavailable, InputError

IR_FILE = "model.xml"


def export_openvino(artifact_dir: str | Path, precision: str = "fp32") -> Path:
    if precision not in ("fp32", "fp16"):
        raise InputError(f"OpenVINO IR precision '{precision}': expected fp32 or fp16")
    try:
        import openvino as ov
    except ImportError as exc:
        raise BackendUnavailable("OpenVINO is not installed: pip install 'anomedge[openvino]'") from exc
    root = Path(artifact_dir)
    artifact = Artifact.load(root)
    model = ov.convert_model(str(artifact.path("model.onnx")))
    xml = root / IR_FILE
    ov.save_model(model, str(xml), compress_to_fp16=precision == "fp16")
    with Artifact.edit(root) as edit:
        for path in (xml, xml.with_suffix(".bin")):
            edit.add_file(path.name)
        edit.meta["model"]["openvino"] = {"file": IR_FILE, "precision": precision}
    return xml
