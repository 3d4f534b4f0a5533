"""The artifact folder: load and verify, the one editing API, atomic writes.

Layout (DESIGN.md §3): ``metadata.json`` plus the files it lists (``model.onnx``, ``bank.npy``, ...)
and, optionally, ``signature.json`` (signing.py). ``Artifact.load(dir)`` refuses, with one line:
- a metadata.json that is not a regular file, over 1 MiB, not JSON, nested over 32 levels, or with
  duplicate keys; another schema version; any field of the wrong type or range (schema.py);
- a contract block changed since export (its spec hash, schema.py), naming the block;
- a listed file that is missing, not a regular file, outside the folder (symlink), or whose sha256
  differs; a wrong signature, or no trusted signature where one is required (signing.py);
- an ``.npy`` whose header lies (shape × dtype ≠ file size), holds objects, or does not fit the
  scoring block; an ``.onnx`` that is not ONNX (onnx_io.py), keeps weights outside the folder, or
  whose declared input / feature width disagrees with the metadata and the arrays.

``Artifact.edit(dir)`` is the only way tools change metadata.json after export (see ``ArtifactEdit``).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import stat
import tempfile
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from .. import __version__
from ..errors import ArtifactError
from .onnx_io import read_graph_io
from .schema import (FIX, MAX_METADATA_BYTES, METADATA, SCHEMA_VERSION, SIGNATURE, Metadata, SchemaError,
                     check_metadata, check_spec, file_name, parse_json, spec_digests)

_HASH_CHUNK = 1 << 20
_NPY_DTYPE_KINDS = "biuf"  # bool, signed / unsigned integers, floats: never objects or records


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_regular(path: Path, limit: int) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (opened non-blocking: a FIFO cannot hang)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot open ({exc.strerror}); check the folder and its permissions") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ArtifactError(f"{path}: not a regular file; expected the file written by ad-export / ad-sign")
        if info.st_size > limit:
            raise ArtifactError(f"{path}: {info.st_size} bytes, at most {limit} expected; {FIX}")
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ArtifactError(f"{path}: more than {limit} bytes; {FIX}")
    return data


def read_metadata_bytes(root: Path) -> bytes:
    """metadata.json's bytes (a regular file of at most 1 MiB)."""
    try:
        return read_regular(root / METADATA, MAX_METADATA_BYTES)
    except FileNotFoundError:
        raise ArtifactError(f"{root}: no {METADATA}; expected an artifact folder written by ad-export") from None


def parse_metadata(root: Path, data: bytes) -> dict[str, Any]:
    """Bytes → checked raw dict: JSON limits, schema version, every field, the spec hash."""
    where = root / METADATA
    raw = parse_json(data, str(where))
    version = raw.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ArtifactError(f"{where}: schema_version {str(version)[:20]}, this anomedge {__version__} reads "
                            f"{SCHEMA_VERSION}; re-export the artifact or install the matching anomedge")
    try:
        check_metadata(raw)
        check_spec(raw)
    except ArtifactError as exc:
        raise type(exc)(f"{where}: {exc}") from None
    return raw


def npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from an ``.npy`` header, refused unless it is a plain numeric array whose data is
    exactly the rest of the file (a lying header never becomes an allocation)."""
    from numpy.lib import format as npy

    readers = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}
    size = path.stat().st_size
    with open(path, "rb") as handle:
        try:
            version = npy.read_magic(handle)
            if version not in readers:
                raise ValueError(f"format version {version}, expected 1.0 or 2.0")
            try:
                shape, _, dtype = readers[version](handle, max_header_size=10000)
            except TypeError:  # numpy < 1.24 has no max_header_size (its header is bounded by the file)
                shape, _, dtype = readers[version](handle)
        except Exception as exc:  # numpy's header parser raises ValueError, SyntaxError, tokenize.TokenError, …
            raise ArtifactError(f"{path}: not a plain .npy array ({str(exc).splitlines()[0][:120]}); "
                                "copy the file again or re-export") from None
        offset = handle.tell()
    if dtype.hasobject or dtype.names is not None or dtype.subdtype is not None or dtype.kind not in _NPY_DTYPE_KINDS:
        raise ArtifactError(f"{path}: not a plain .npy array (dtype {dtype}, expected numbers; objects are never "
                            "unpickled); re-export")
    if len(shape) > 4 or any(d < 0 for d in shape):
        raise ArtifactError(f"{path}: shape {tuple(shape)}, expected at most 4 non-negative dims; re-export")
    expected = offset + int(np.prod(shape, dtype=object)) * dtype.itemsize
    if expected != size:
        raise ArtifactError(f"{path}: header says {tuple(shape)} {dtype} ({expected} bytes with the header), the "
                            f"file has {size} bytes; the file is truncated or its header lies: copy it again or re-export")
    return tuple(shape), dtype


class Artifact:
    """A loaded, verified artifact folder.

    ``Artifact.load(dir)`` runs every check listed in the module docstring; ``array(name)`` loads an
    ``.npy`` (cached, no pickle); ``path(name)`` is the path of any listed file; ``sha256`` is the
    identity of everything but the thresholds (files included, through the ``files`` block's hash).
    """

    def __init__(self, root: Path, metadata: Metadata):
        self.root = Path(root)
        self.metadata = metadata
        self._arrays: dict[str, np.ndarray] = {}
        self.signed_by: str | None = None  # public-key fingerprint of a verified signature

    @classmethod
    def load(cls, root: str | os.PathLike, verify: bool = True, trust: Sequence[str | os.PathLike] = (),
             require_signature: bool = False) -> "Artifact":
        """Load and check the folder. ``verify=False`` checks only metadata.json (no file hashes; for
        identity look-ups). ``trust``: public-key files one of which must have signed the artifact;
        ``require_signature``: refuse an unsigned artifact (implied by ``trust``)."""
        root = Path(root)
        return cls._from_bytes(root, read_metadata_bytes(root), verify, trust, require_signature)

    @classmethod
    def _from_bytes(cls, root: Path, data: bytes, verify: bool = True, trust: Sequence[str | os.PathLike] = (),
                    require_signature: bool = False) -> "Artifact":
        artifact = cls(root, Metadata.from_dict(parse_metadata(root, data)))
        if verify:
            artifact.verify()
            from .signing import check_signature

            artifact.signed_by = check_signature(artifact, trust, require_signature)
            artifact.check_contents()
        return artifact

    @classmethod
    @contextlib.contextmanager
    def edit(cls, root: str | os.PathLike, sign_key: str | os.PathLike | None = None) -> Iterator["ArtifactEdit"]:
        """Change metadata.json: ``with Artifact.edit(dir) as e: e.meta["thresholds"] = …; e.add_file(name)``.

        On entry the artifact is loaded and verified (``e.artifact``) from the bytes read then; the body
        may take minutes (scoring, quantising). On a normal exit the new dict is schema-checked,
        re-hashed and written atomically (0644) — refused if metadata.json changed since it was read.
        An exception in the body writes nothing. If the edit changes the signed contract, the existing
        signature is replaced (``sign_key``) or removed with a warning: a stale one would be refused.
        """
        root = Path(root)
        before = read_metadata_bytes(root)
        artifact = cls._from_bytes(root, before)
        change = ArtifactEdit(artifact, copy.deepcopy(parse_json(before, str(root / METADATA))))
        yield change
        with _folder_lock(root):
            cls._write_edit(root, before, artifact, change, sign_key)

    @classmethod
    def _write_edit(cls, root: Path, before: bytes, artifact: "Artifact", change: "ArtifactEdit",
                    sign_key: str | os.PathLike | None) -> None:
        if read_metadata_bytes(root) != before:
            raise ArtifactError(f"{root / METADATA} changed since it was read (another ad-calibrate, ad-quantize or "
                                "hand edit?); run the command again")
        new = change.meta
        new["spec_sha256"] = spec_digests(new)
        try:
            check_metadata(new)
        except SchemaError as exc:
            raise SchemaError(f"{root / METADATA}: the edit would write {exc}") from None
        metadata = Metadata.from_dict(new)
        if sign_key is not None:
            from .signing import check_private_key

            check_private_key(sign_key)  # before anything is written
        signature = root / SIGNATURE
        if sign_key is None and signature.exists() and metadata.digest != artifact.metadata.digest:
            signature.unlink()
            warnings.warn(f"{signature}: removed, the edit changed the signed contract; sign again with "
                          f"ad-sign {root} --key KEY", stacklevel=4)
        write_metadata(root, new)
        if sign_key is not None:
            from .signing import sign_payload

            sign_payload(root, metadata, sign_key)
        change.artifact = cls(root, metadata)

    def verify(self) -> None:
        """Raise ArtifactError naming the first missing, out-of-folder or tampered file."""
        real_root = self.root.resolve()
        for name, expected in self.metadata.files.items():
            path = self.root / file_name(name, f"files key {name!r}")
            if path.is_symlink() and not path.resolve().is_relative_to(real_root):
                raise ArtifactError(f"{path}: a symlink to {path.resolve()}, outside the artifact folder; "
                                    "copy the real file into the folder")
            if not path.exists():
                raise ArtifactError(f"{path}: listed in {METADATA} but missing; copy the whole artifact folder")
            if not path.is_file():
                raise ArtifactError(f"{path}: not a regular file; copy the whole artifact folder again")
            actual = sha256_file(path)
            if actual != expected:
                raise ArtifactError(
                    f"{path}: sha256 {actual[:12]}… does not match {expected[:12]}… in {METADATA}; "
                    "the file was modified or truncated: copy it again or re-export"
                )

    def check_contents(self) -> None:
        """Headers of every ``.npy`` and ``.onnx``, and that they agree with each other and the metadata."""
        from .consistency import check_contents

        check_contents(self)

    def reread_thresholds(self) -> dict[str, Any]:
        """The ``thresholds`` block as metadata.json holds it now (after a re-calibration, for a running
        inspector to switch to), schema-checked; ArtifactError if anything but the thresholds changed
        since this artifact was loaded (that needs a restart, which re-verifies everything)."""
        raw = parse_metadata(self.root, read_metadata_bytes(self.root))
        current = Metadata.from_dict(raw)
        if current.digest != self.metadata.digest:
            raise ArtifactError(f"{self.root / METADATA}: the contract changed since the artifact was loaded (not only "
                                "the thresholds); restart to load and verify the new artifact")
        return current.thresholds

    def has(self, name: str) -> bool:
        return name in self.metadata.files

    def path(self, name: str) -> Path:
        if name not in self.metadata.files:
            raise ArtifactError(f"{self.root}: artifact has no '{name}' (has: {', '.join(sorted(self.metadata.files))})")
        return self.root / name

    def array(self, name: str) -> np.ndarray:
        if name not in self._arrays:
            path = self.path(name)
            npy_header(path)
            try:
                self._arrays[name] = np.load(path, allow_pickle=False)
            except ValueError as exc:
                raise ArtifactError(f"{path}: not a plain .npy array ({exc})") from exc
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
        """The identity of the exported model: the spec hash of every block but ``thresholds`` (the
        ``files`` block, and so every file's sha256, included)."""
        return self.metadata.digest


@contextlib.contextmanager
def _folder_lock(root: Path) -> Iterator[None]:
    """An exclusive flock on the folder itself while an edit compares and writes, so two anomedge writers
    cannot both pass the "unchanged since read" check (no lock file is left behind; no-op without fcntl)."""
    try:
        import fcntl
    except ImportError:  # Windows: the byte comparison alone guards
        yield
        return
    fd = os.open(root, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class ArtifactEdit:
    """The open edit of ``Artifact.edit``: ``meta`` is metadata.json as a dict, to change in place;
    ``artifact`` is the verified artifact as read (after the edit: as written)."""

    def __init__(self, artifact: Artifact, meta: dict[str, Any]):
        self.artifact = artifact
        self.meta = meta

    @property
    def root(self) -> Path:
        return self.artifact.root

    def add_file(self, name: str) -> None:
        """List (or re-hash) ``name``, a file the tool has just written into the folder."""
        path = self.root / file_name(name, f"files key {name!r}")
        if not path.is_file():
            raise ArtifactError(f"{path}: not a regular file; cannot add it to the artifact")
        self.meta["files"][name] = sha256_file(path)


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


def write_metadata(root: Path, metadata: dict[str, Any]) -> dict[str, Any]:
    """Atomically write ``metadata.json`` (temp file, fsync, rename, mode 0644) with ``spec_sha256``
    recomputed; returns the dict written. Low level: tools change an artifact with ``Artifact.edit``."""
    metadata = {**metadata, "spec_sha256": spec_digests(metadata)}
    text = json_text(metadata)
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
    return metadata


def json_text(metadata: dict[str, Any]) -> str:
    import json

    return json.dumps(metadata, indent=2, sort_keys=False) + "\n"


def write_artifact(root: str | os.PathLike, metadata: Metadata, arrays: dict[str, np.ndarray]) -> Artifact:
    """Write ``arrays`` as ``.npy`` files into ``root`` (which may already hold e.g. model.onnx), hash
    every file listed in ``metadata.files`` plus the arrays, schema-check and write metadata.json last."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        np.save(root / name, np.ascontiguousarray(array), allow_pickle=False)
    names = sorted(set(metadata.files) | set(arrays))
    files = {name: sha256_file(root / name) for name in names}
    created = metadata.created or datetime.now(timezone.utc).isoformat(timespec="seconds")
    final = Metadata(**{**metadata.__dict__, "files": files, "created": created,
                        "versions": metadata.versions or library_versions(), "schema_version": SCHEMA_VERSION})
    raw = final.to_dict()
    raw["spec_sha256"] = spec_digests(raw)
    try:
        check_metadata(raw)
    except SchemaError as exc:
        raise SchemaError(f"{root / METADATA}: the exporter wrote {exc}") from None
    written = write_metadata(root, raw)
    return Artifact(root, Metadata.from_dict(written))
