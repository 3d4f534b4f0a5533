"""The artifact folder: the only thing that crosses from the workstation to the edge (docs/artifact.md).

- ``schema``: typed blocks (InputSpec, Metadata), SCHEMA_VERSION, the field checks, the spec hash;
- ``folder``: ``Artifact.load`` (every check), ``Artifact.edit`` (the one way to change metadata.json
  after export), atomic writes, ``.npy`` header checks;
- ``consistency``: arrays, graphs and metadata agree; ``onnx_io``: an ONNX file's declared inputs and
  outputs without onnx; ``signing``: optional ed25519 signatures.
"""

from .folder import (Artifact, ArtifactEdit, library_versions, npy_header, read_metadata_bytes, sha256_file,
                     write_artifact, write_metadata)
from .schema import (MAX_METADATA_BYTES, METADATA, MUTABLE_BLOCKS, SCHEMA_VERSION, SIGNATURE, InputSpec, Metadata,
                     SchemaError, spec_digests)

__all__ = ["Artifact", "ArtifactEdit", "InputSpec", "MAX_METADATA_BYTES", "METADATA", "MUTABLE_BLOCKS", "Metadata",
           "SCHEMA_VERSION", "SIGNATURE", "SchemaError", "library_versions", "npy_header", "read_metadata_bytes",
           "sha256_file", "spec_digests", "write_artifact", "write_metadata"]
