"""The artifact folder: the only thing that crosses from the workstation to the edge.

Layout (DESIGN.md §3): ``metadata.json`` plus the files it lists (``model.onnx``, ``bank.npy``, ...).
Every listed file carries a sha256 checked on load; the ``thresholds`` block is editable and not
hashed, so re-calibrating never needs a re-export. Arrays load with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .errors import ArtifactError

SCHEMA_VERSION = 1
METADATA = "metadata.json"
_HASH_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class InputSpec:
    """How a frame becomes the model input: BGR/GRAY uint8 → RGB float → resize → (x/255−mean)/std."""

    name: str
    height: int
    width: int
    color: str = "RGB"  # channel order the model expects: RGB | BGR | GRAY
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    dynamic_batch: bool = True

    @property
    def shape(self) -> tuple[str | int, int, int, int]:
        return ("N" if self.dynamic_batch else 1, 3, self.height, self.width)


@dataclass(frozen=True)
class Metadata:
    """Parsed ``metadata.json``. ``scoring``/``postprocess``/``thresholds``/``model`` stay plain dicts:
    their keys depend on the detector and are documented where they are read."""

    detector: str
    input: InputSpec
    outputs: dict[str, Any]
    scoring: dict[str, Any]
    postprocess: dict[str, Any]
    model: dict[str, Any]
    thresholds: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    created: str = ""
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["input"] = {k: getattr(self.input, k) for k in self.input.__dataclass_fields__}
        d["input"]["shape"] = list(self.input.shape)
        return json.loads(json.dumps(d))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Metadata":
        try:
            inp = dict(d["input"])
            inp.pop("shape", None)
            inp["mean"], inp["std"] = tuple(inp["mean"]), tuple(inp["std"])
            fields = {k: d[k] for k in cls.__dataclass_fields__ if k in d and k != "input"}
            return cls(input=InputSpec(**inp), **fields)
        except (KeyError, TypeError) as exc:
            raise ArtifactError(f"metadata.json is malformed ({exc!r}); re-export the artifact with ad-export") from exc


class Artifact:
    """A loaded, verified artifact folder.

    ``Artifact.load(dir)`` checks the schema version and every file's sha256; ``array(name)`` loads an
    ``.npy`` (cached, no pickle); ``path(name)`` is the path of any listed file.
    """

    def __init__(self, root: Path, metadata: Metadata):
        self.root = root
        self.metadata = metadata
        self._arrays: dict[str, np.ndarray] = {}

    @classmethod
    def load(cls, root: str | os.PathLike, verify: bool = True) -> "Artifact":
        root = Path(root)
        meta_path = root / METADATA
        if not meta_path.is_file():
            raise ArtifactError(f"{root}: no {METADATA}; expected an artifact folder written by ad-export")
        try:
            raw = json.loads(meta_path.read_text())
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"{meta_path}: not valid JSON ({exc}); re-export with ad-export") from exc
        version = raw.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ArtifactError(
                f"{meta_path}: schema_version {version}, this anomedge {__version__} reads {SCHEMA_VERSION}; "
                "re-export the artifact or install the matching anomedge"
            )
        artifact = cls(root, Metadata.from_dict(raw))
        if verify:
            artifact.verify()
        return artifact

    def verify(self) -> None:
        """Raise ArtifactError naming the first missing or tampered file."""
        for name, expected in self.metadata.files.items():
            path = self.root / name
            if not path.is_file():
                raise ArtifactError(f"{path}: listed in {METADATA} but missing; copy the whole artifact folder")
            actual = sha256_file(path)
            if actual != expected:
                raise ArtifactError(
                    f"{path}: sha256 {actual[:12]}… does not match {expected[:12]}… in {METADATA}; "
                    "the file was modified or truncated: copy it again or re-export"
                )

    def has(self, name: str) -> bool:
        return name in self.metadata.files

    def path(self, name: str) -> Path:
        if name not in self.metadata.files:
            raise ArtifactError(f"{self.root}: artifact has no '{name}' (has: {', '.join(sorted(self.metadata.files))})")
        return self.root / name

    def array(self, name: str) -> np.ndarray:
        if name not in self._arrays:
            try:
                self._arrays[name] = np.load(self.path(name), allow_pickle=False)
            except ValueError as exc:
                raise ArtifactError(f"{self.path(name)}: not a plain .npy array ({exc})") from exc
        return self._arrays[name]

    def variant(self, precision: str) -> str:
        """The ONNX file of a precision variant: 'fp32' → model.onnx, else ``model.variants[precision]``."""
        if precision == "fp32":
            return "model.onnx"
        variants = self.metadata.model.get("variants", {})
        if precision not in variants:
            have = ", ".join(["fp32", *variants])
            raise ArtifactError(f"{self.root}: no {precision} variant (has: {have}); create it with: "
                                f"ad-quantize {self.root} --precision {precision} --calib GOOD_IMAGES")
        return variants[precision]

    @property
    def sha256(self) -> str:
        """A digest of the hashed files: identifies the exported model (thresholds excluded)."""
        joined = "".join(f"{k}:{v};" for k, v in sorted(self.metadata.files.items()))
        return hashlib.sha256(joined.encode()).hexdigest()


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shaped the artifact (those importable now)."""
    import importlib.metadata as im

    versions = {"anomedge": __version__}
    for dist in ("torch", "timm", "onnx", "onnxruntime", "numpy", "opencv-python-headless"):
        try:
            versions[dist] = im.version(dist)
        except im.PackageNotFoundError:
            pass
    return versions


def write_metadata(root: Path, metadata: dict[str, Any]) -> None:
    """Atomically write ``metadata.json`` (temp file, fsync, rename)."""
    text = json.dumps(metadata, indent=2, sort_keys=False) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=".metadata.", dir=root)
    os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; a non-root runtime must still read the artifact
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, root / METADATA)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_artifact(root: str | os.PathLike, metadata: Metadata, arrays: dict[str, np.ndarray]) -> Artifact:
    """Write ``arrays`` as ``.npy`` files into ``root`` (which may already hold e.g. model.onnx), hash
    every file listed in ``metadata.files`` plus the arrays, and write metadata.json last."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        np.save(root / name, np.ascontiguousarray(array), allow_pickle=False)
    names = sorted(set(metadata.files) | set(arrays))
    files = {name: sha256_file(root / name) for name in names}
    created = metadata.created or datetime.now(timezone.utc).isoformat(timespec="seconds")
    final = Metadata(**{**metadata.__dict__, "files": files, "created": created,
                        "versions": metadata.versions or library_versions()})
    write_metadata(root, final.to_dict())
    return Artifact(root, final)
