import json

import numpy as np
import pytest

from anomedge.artifact import Artifact, InputSpec, Metadata, write_artifact, write_metadata
from anomedge.errors import ArtifactError

from conftest import write_tiny_onnx


def _write(tmp_path, arrays=None):
    write_tiny_onnx(tmp_path / "model.onnx", 32, 48)
    meta = Metadata(detector="patchcore", input=InputSpec("image", 32, 48), outputs={"names": ["features"]},
                    scoring={"kind": "knn", "k": 1}, postprocess={"blur_sigma": 4.0, "reduction": {"name": "max"}},
                    model={"backbone": {}}, thresholds={"image": 1.5}, files={"model.onnx": ""})
    return write_artifact(tmp_path, meta, arrays or {"bank.npy": np.arange(12, dtype=np.float32).reshape(3, 4)})


def test_round_trip_keeps_metadata_and_arrays(tmp_path):
    written = _write(tmp_path)
    loaded = Artifact.load(tmp_path)
    assert loaded.metadata == written.metadata
    assert loaded.metadata.input.shape == ("N", 3, 32, 48)
    np.testing.assert_array_equal(loaded.array("bank.npy"), np.arange(12, dtype=np.float32).reshape(3, 4))
    assert set(loaded.metadata.files) == {"model.onnx", "bank.npy"}
    assert all(len(h) == 64 for h in loaded.metadata.files.values())


def test_tampered_file_is_refused_naming_it(tmp_path):
    _write(tmp_path)
    bank = np.load(tmp_path / "bank.npy")
    bank[0, 0] += 1
    np.save(tmp_path / "bank.npy", bank)
    with pytest.raises(ArtifactError, match=r"bank\.npy: sha256 .* does not match"):
        Artifact.load(tmp_path)


def test_missing_file_is_refused_naming_it(tmp_path):
    _write(tmp_path)
    (tmp_path / "model.onnx").unlink()
    with pytest.raises(ArtifactError, match=r"model\.onnx: listed in metadata\.json but missing"):
        Artifact.load(tmp_path)


def test_not_an_artifact_folder(tmp_path):
    with pytest.raises(ArtifactError, match="no metadata.json"):
        Artifact.load(tmp_path)


def test_other_schema_version_is_refused(tmp_path):
    _write(tmp_path)
    meta = json.loads((tmp_path / "metadata.json").read_text())
    meta["schema_version"] = 99
    write_metadata(tmp_path, meta)
    with pytest.raises(ArtifactError, match="schema_version 99"):
        Artifact.load(tmp_path)


def test_thresholds_are_editable_without_breaking_hashes(tmp_path):
    art = _write(tmp_path)
    meta = art.metadata.to_dict()
    meta["thresholds"] = {"image": 2.5}
    write_metadata(tmp_path, meta)
    reloaded = Artifact.load(tmp_path)
    assert reloaded.metadata.thresholds == {"image": 2.5}
    assert reloaded.sha256 == art.sha256


def test_object_arrays_never_unpickle(tmp_path):
    from anomedge.artifact import sha256_file

    art = _write(tmp_path)
    np.save(tmp_path / "bank.npy", np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    meta = art.metadata.to_dict()
    meta["files"]["bank.npy"] = sha256_file(tmp_path / "bank.npy")  # consistent hashes: only pickle guards it
    write_metadata(tmp_path, meta)
    with pytest.raises(ArtifactError, match="not a plain .npy"):
        Artifact.load(tmp_path).array("bank.npy")


def test_unknown_file_name(tmp_path):
    with pytest.raises(ArtifactError, match="has no 'mean.npy'"):
        _write(tmp_path).path("mean.npy")


def test_metadata_stays_world_readable_after_rewrites(tmp_path):
    import stat

    art = _write(tmp_path)
    write_metadata(tmp_path, art.metadata.to_dict())
    assert stat.S_IMODE((tmp_path / "metadata.json").stat().st_mode) == 0o644
