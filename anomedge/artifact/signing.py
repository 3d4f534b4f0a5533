"""Optional ed25519 signatures (``pip install 'anomedge[sign]'``: the ``cryptography`` library).

The signed message is the canonical JSON of ``spec_sha256`` — the hash of every metadata block but
``thresholds``, the ``files`` block (every file's sha256) included — prefixed by a domain tag. So a
signature covers the model, its arrays and every parameter of the decision except the thresholds,
which stay editable on the line. ``signature.json`` sits beside metadata.json, unhashed:

    {"algorithm": "ed25519", "public_key": "<64 hex>", "artifact_sha256": "<64 hex>", "signature": "<128 hex>"}

Keys are standard PEM files (PKCS#8 private, SubjectPublicKeyInfo public), interchangeable with
``openssl genpkey -algorithm ed25519``. Policy at load (``check_signature``):
- a signature present is always verified; a wrong one is refused;
- ``trust`` (public-key files): the signer must be one of them, an unsigned artifact is refused;
- ``require_signature`` without ``trust``: some valid signature must be present;
- without the library a present signature can only be skipped with a warning, unless a policy
  asks for it (then: one-line error naming the pip install).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from ..errors import ArtifactError, BackendUnavailable, InputError
from .schema import HEX64, SIGNATURE, canonical

if TYPE_CHECKING:
    from .folder import Artifact
    from .schema import Metadata

DOMAIN = b"anomedge-artifact-signature/1\n"
INSTALL = "pip install 'anomedge[sign]'   (the cryptography library)"
MAX_SIGNATURE_BYTES = 4096


def _crypto():
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as exc:
        raise BackendUnavailable(f"artifact signatures need the cryptography library: {INSTALL}") from exc
    return serialization, ed25519


def message(metadata: "Metadata") -> bytes:
    """The bytes that are signed: domain tag + canonical JSON of the per-block spec hashes."""
    return DOMAIN + canonical(metadata.spec_sha256)


def fingerprint(public_raw: bytes) -> str:
    """Short name of a public key: the first 16 hex digits of its raw 32 bytes."""
    return public_raw.hex()[:16]


def keygen(out: str | os.PathLike) -> tuple[Path, Path]:
    """Write a new private key to ``out`` (mode 0600) and its public key to ``out.pub``; refuses to overwrite."""
    serialization, ed25519 = _crypto()
    private_path, public_path = Path(out), Path(f"{out}.pub")
    for path in (private_path, public_path):
        if path.exists():
            raise InputError(f"{path}: exists; choose another name (a key is never overwritten)")
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    public_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo))
    return private_path, public_path


def _read_key(path: str | os.PathLike, private: bool):
    serialization, ed25519 = _crypto()
    path = Path(path)
    try:
        data = path.read_bytes()[:16384]
        key = (serialization.load_pem_private_key(data, password=None) if private
               else serialization.load_pem_public_key(data))
    except OSError as exc:
        raise InputError(f"{path}: cannot read the key ({exc.strerror})") from None
    except (ValueError, TypeError):
        raise InputError(f"{path}: not an unencrypted PEM {'private' if private else 'public'} key; "
                         "make a key pair with ad-sign --keygen PATH") from None
    want = ed25519.Ed25519PrivateKey if private else ed25519.Ed25519PublicKey
    if not isinstance(key, want):
        raise InputError(f"{path}: a {type(key).__name__}, expected an ed25519 key; make one with ad-sign --keygen PATH")
    return key


def check_private_key(path: str | os.PathLike) -> None:
    """Raise InputError / BackendUnavailable now if ``path`` is not a usable ed25519 private key."""
    _read_key(path, private=True)


def _raw_public(key) -> bytes:
    serialization, _ = _crypto()
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def sign_payload(root: Path, metadata: "Metadata", key_path: str | os.PathLike) -> Path:
    """Sign the artifact whose (already written) metadata is ``metadata``; writes signature.json."""
    key = _read_key(key_path, private=True)
    record = {"algorithm": "ed25519", "public_key": _raw_public(key.public_key()).hex(),
              "artifact_sha256": metadata.digest, "signature": key.sign(message(metadata)).hex()}
    path = Path(root) / SIGNATURE
    tmp = path.with_name(f".{SIGNATURE}.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path


def sign(artifact_dir: str | os.PathLike, key_path: str | os.PathLike) -> Path:
    """Verify the artifact as it stands, then sign it."""
    from .folder import Artifact

    artifact = Artifact.load(artifact_dir)
    return sign_payload(artifact.root, artifact.metadata, key_path)


def _read_signature(path: Path) -> dict[str, str]:
    from .folder import read_regular

    try:
        record = json.loads(read_regular(path, MAX_SIGNATURE_BYTES))
    except (OSError, ValueError, RecursionError):
        record = None
    fields = {"algorithm": None, "public_key": HEX64, "artifact_sha256": HEX64, "signature": None}
    ok = isinstance(record, dict) and set(record) == set(fields) and record["algorithm"] == "ed25519" \
        and all(isinstance(record[k], str) for k in fields) \
        and all(p.fullmatch(record[k]) for k, p in fields.items() if p is not None) \
        and len(record["signature"]) == 128 and all(c in "0123456789abcdef" for c in record["signature"])
    if not ok:
        raise ArtifactError(f"{path}: not a valid ed25519 signature record; sign again with ad-sign ARTIFACT --key KEY "
                            "(or delete it to run unsigned)")
    return record


def check_signature(artifact: "Artifact", trust: Sequence[str | os.PathLike] = (),
                    require_signature: bool = False) -> str | None:
    """Apply the policy above; returns the signer's fingerprint (None when unsigned or unchecked)."""
    path = artifact.root / SIGNATURE
    policy = bool(trust) or require_signature
    if not path.exists() and not path.is_symlink():
        if policy:
            raise ArtifactError(f"{artifact.root}: not signed, and a signature is required (--trust / "
                                "--require-signature); sign it with ad-sign ARTIFACT --key KEY")
        return None
    record = _read_signature(path)
    try:
        _, ed25519 = _crypto()
    except BackendUnavailable:
        if policy:
            raise
        warnings.warn(f"{path}: not checked, the cryptography library is missing: {INSTALL}", stacklevel=4)
        return None
    from cryptography.exceptions import InvalidSignature

    public_raw = bytes.fromhex(record["public_key"])
    if trust:
        trusted = {_raw_public(_read_key(p, private=False)) for p in trust}
        if public_raw not in trusted:
            raise ArtifactError(f"{path}: signed by key {fingerprint(public_raw)}, which is not among the --trust keys; "
                                "pass the signer's public key or re-sign with a trusted key")
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(public_raw).verify(bytes.fromhex(record["signature"]),
                                                                    message(artifact.metadata))
    except InvalidSignature:
        raise ArtifactError(f"{path}: the signature does not match this artifact (its metadata or files changed after "
                            f"signing, artifact sha256 {artifact.sha256[:12]}… vs signed "
                            f"{record['artifact_sha256'][:12]}…); copy the artifact again or re-sign it") from None
    return fingerprint(public_raw)
