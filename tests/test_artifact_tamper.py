"""Tamper and malformed-artifact cases against Artifact.load / Artifact.edit (in-process, on a tiny real
artifact: a real ONNX Conv graph, a real bank). Every refusal is one ArtifactError line naming the field."""

from __future__ import annotations

import json
import shutil
import stat
import threading
import tracemalloc

import numpy as np
import pytest

from anomedge.artifact import Artifact, sha256_file, spec_digests, write_metadata
from anomedge.artifact.onnx_io import read_graph_io
from anomedge.errors import ArtifactError

from artifact_cases import CASES, field, load_raw, replace_file, rewrite


def test_good_artifact_loads_and_its_identity_covers_spec_and_files(graph_artifact):
    art = Artifact.load(graph_artifact)
    raw = load_raw(graph_artifact)
    assert raw["spec_sha256"] == spec_digests(raw)
    assert set(raw["spec_sha256"]) == set(raw) - {"thresholds", "spec_sha256"}
    assert "files" in raw["spec_sha256"] and len(art.sha256) == 64


@pytest.mark.parametrize("name, mutate, message", CASES, ids=[c[0] for c in CASES])
def test_malformed_artifact_is_one_line_error(graph_artifact, name, mutate, message):
    mutate(graph_artifact)
    done = {}

    def load():
        try:
            Artifact.load(graph_artifact)
        except ArtifactError as exc:
            done["error"] = str(exc)

    worker = threading.Thread(target=load, daemon=True)  # a FIFO or a huge header must not hang the load
    worker.start()
    worker.join(30)
    assert "error" in done, f"{name}: loaded without an error (or hung)"
    assert message in done["error"], done["error"]
    assert "\n" not in done["error"]


def test_thresholds_edited_by_hand_keep_spec_and_identity(graph_artifact):
    before = Artifact.load(graph_artifact).sha256
    rewrite(graph_artifact, lambda raw: raw["thresholds"].update(image=2.5), restamp=False)
    art = Artifact.load(graph_artifact)
    assert art.metadata.thresholds["image"] == 2.5 and art.sha256 == before


def test_identity_changes_with_a_contract_block_and_with_a_file(graph_artifact):
    base = Artifact.load(graph_artifact).sha256
    field("postprocess.blur_sigma", 2.0)(graph_artifact)
    assert Artifact.load(graph_artifact).sha256 != base
    replace_file("bank.npy", np.ones((10, 4), np.float32))(graph_artifact)
    second = Artifact.load(graph_artifact).sha256
    replace_file("bank.npy", np.full((10, 4), 2, np.float32))(graph_artifact)
    assert Artifact.load(graph_artifact).sha256 != second


def test_lying_header_is_refused_without_a_big_allocation(graph_artifact):
    from artifact_cases import lying_npy

    lying_npy(graph_artifact)
    tracemalloc.start()
    with pytest.raises(ArtifactError, match=r"header says \(1000000000, 4\) float32"):
        Artifact.load(graph_artifact)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 64 << 20  # the header claims 16 GB


def test_onnx_reader_matches_onnx(graph_artifact):
    onnx = pytest.importorskip("onnx")
    io = read_graph_io(graph_artifact / "model.onnx")
    model = onnx.load(str(graph_artifact / "model.onnx"))
    dims = lambda v: tuple(d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim)  # noqa: E731
    assert io.inputs == {v.name: (v.type.tensor_type.elem_type, dims(v)) for v in model.graph.input}
    assert io.outputs == {v.name: (v.type.tensor_type.elem_type, dims(v)) for v in model.graph.output}
    assert io.inputs["image"] == (1, ("N", 3, 32, 32))


def test_onnx_with_external_data_is_refused(graph_artifact, tmp_path):
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(graph_artifact / "model.onnx"))
    onnx.save(model, str(tmp_path / "ext.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    with pytest.raises(ArtifactError, match="external file"):
        read_graph_io(tmp_path / "ext.onnx")


# --- the edit API -------------------------------------------------------------------------------------------

def test_edit_rehashes_and_keeps_mode(graph_artifact):
    with Artifact.edit(graph_artifact) as edit:
        edit.meta["scoring"]["placement_by_backend"] = {"onnxruntime": "host"}
    assert edit.artifact.metadata.scoring["placement_by_backend"] == {"onnxruntime": "host"}
    assert Artifact.load(graph_artifact).metadata.scoring["placement_by_backend"] == {"onnxruntime": "host"}
    assert stat.S_IMODE((graph_artifact / "metadata.json").stat().st_mode) == 0o644


def test_edit_adds_a_file_with_its_hash(graph_artifact):
    shutil.copy(graph_artifact / "model.onnx", graph_artifact / "model.fp16.onnx")
    with Artifact.edit(graph_artifact) as edit:
        edit.add_file("model.fp16.onnx")
        edit.meta["model"]["variants"] = {"fp16": "model.fp16.onnx"}
    assert Artifact.load(graph_artifact).metadata.files["model.fp16.onnx"] == sha256_file(graph_artifact / "model.onnx")


def test_edit_refuses_when_metadata_changed_since_read(graph_artifact):
    with pytest.raises(ArtifactError, match="changed since it was read"):
        with Artifact.edit(graph_artifact) as edit:
            edit.meta["thresholds"]["image"] = 3.0
            rewrite(graph_artifact, lambda raw: raw["thresholds"].update(image=9.0), restamp=False)
    assert Artifact.load(graph_artifact).metadata.thresholds["image"] == 9.0  # the other writer's value stands


def test_edit_refuses_a_malformed_result_and_writes_nothing(graph_artifact):
    before = (graph_artifact / "metadata.json").read_bytes()
    with pytest.raises(ArtifactError, match=r"the edit would write scoring\.k is 0"):
        with Artifact.edit(graph_artifact) as edit:
            edit.meta["scoring"]["k"] = 0
    assert (graph_artifact / "metadata.json").read_bytes() == before


def test_edit_body_failure_writes_nothing(graph_artifact):
    before = (graph_artifact / "metadata.json").read_bytes()
    with pytest.raises(RuntimeError):
        with Artifact.edit(graph_artifact) as edit:
            edit.meta["thresholds"]["image"] = 5.0
            raise RuntimeError("scoring failed")
    assert (graph_artifact / "metadata.json").read_bytes() == before


def test_edit_refuses_a_tampered_artifact(graph_artifact):
    field("input.mean.0", 0.1, restamp=False)(graph_artifact)
    with pytest.raises(ArtifactError, match="block 'input' changed since export"):
        with Artifact.edit(graph_artifact):
            pass


# --- signatures ---------------------------------------------------------------------------------------------

@pytest.fixture
def keys(tmp_path):
    pytest.importorskip("cryptography", reason="signing needs the sign extra: pip install 'anomedge[sign]'")
    from anomedge.artifact.signing import keygen

    return keygen(tmp_path / "key"), keygen(tmp_path / "other")


def test_signed_artifact_loads_trusted_and_refuses_other_keys(graph_artifact, keys):
    from anomedge.artifact.signing import sign

    (private, public), (_, other_public) = keys
    sign(graph_artifact, private)
    art = Artifact.load(graph_artifact, trust=[public])
    assert art.signed_by and json.loads((graph_artifact / "signature.json").read_text())["artifact_sha256"] == art.sha256
    with pytest.raises(ArtifactError, match="not among the --trust keys"):
        Artifact.load(graph_artifact, trust=[other_public])


def test_unsigned_runs_unless_a_signature_is_required(graph_artifact, keys):
    (_, public), _ = keys
    assert Artifact.load(graph_artifact).signed_by is None
    for kwargs in ({"require_signature": True}, {"trust": [public]}):
        with pytest.raises(ArtifactError, match="not signed, and a signature is required"):
            Artifact.load(graph_artifact, **kwargs)


def test_bank_swapped_with_files_and_spec_rehashed_is_refused_by_the_signature(graph_artifact, keys):
    from anomedge.artifact.signing import sign

    (private, public), _ = keys
    sign(graph_artifact, private)
    replace_file("bank.npy", np.zeros((10, 4), np.float32), update_hash=True, restamp=True)(graph_artifact)
    Artifact.load(graph_artifact, verify=False)  # the hashes alone are consistent again ...
    for kwargs in ({}, {"trust": [public]}):  # ... a wrong signature is refused with or without --trust
        with pytest.raises(ArtifactError, match="signature does not match this artifact"):
            Artifact.load(graph_artifact, **kwargs)


def test_recalibration_keeps_the_signature_and_a_contract_edit_drops_it(graph_artifact, keys):
    from anomedge.artifact.signing import sign

    (private, public), _ = keys
    sign(graph_artifact, private)
    with Artifact.edit(graph_artifact) as edit:
        edit.meta["thresholds"]["image"] = 4.0
    assert Artifact.load(graph_artifact, trust=[public]).metadata.thresholds["image"] == 4.0
    with pytest.warns(UserWarning, match="removed, the edit changed the signed contract"):
        with Artifact.edit(graph_artifact) as edit:
            edit.meta["scoring"]["placement_by_backend"] = {"onnxruntime": "host"}
    assert not (graph_artifact / "signature.json").exists()
    with Artifact.edit(graph_artifact, sign_key=private) as edit:
        edit.meta["scoring"]["placement_by_backend"] = {"onnxruntime": "graph"}
    assert Artifact.load(graph_artifact, trust=[public]).signed_by


def test_keygen_never_overwrites_and_keeps_the_private_key_private(tmp_path, keys):
    from anomedge.artifact.signing import keygen
    from anomedge.errors import InputError

    (private, _), _ = keys
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    with pytest.raises(InputError, match="exists"):
        keygen(private)


def test_write_metadata_restamps_what_it_writes(graph_artifact):
    raw = load_raw(graph_artifact)
    raw["postprocess"]["blur_sigma"] = 3.0
    written = write_metadata(graph_artifact, raw)
    assert written["spec_sha256"] == spec_digests(written) != raw["spec_sha256"]


# --- fuzz: any value in any field, any byte of the graph or the array header ---------------------------------

HOSTILE_VALUES = [None, -1, 0, 1e308, float("nan"), float("-inf"), "x" * 300, "", [], {}, True, [[[]]], 2**70, "../x"]


def _leaves(node, path=()):
    if isinstance(node, dict):
        for k, v in node.items():
            yield path + (k,)
            yield from _leaves(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield path + (i,)
            yield from _leaves(v, path + (i,))


def test_fuzzed_metadata_fields_load_or_fail_with_one_artifact_error(graph_artifact):
    """Every field set to each hostile value (spec re-hashed): Artifact.load loads or raises one ArtifactError
    line; never another exception. The ones that load must still be runnable values (checked by type)."""
    import copy

    pristine = load_raw(graph_artifact)
    paths = [p for p in _leaves(pristine) if p[0] != "spec_sha256"]
    refused = 0
    for path in paths:
        for value in HOSTILE_VALUES:
            raw = copy.deepcopy(pristine)
            node = raw
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = value
            write_metadata(graph_artifact, raw)
            try:
                art = Artifact.load(graph_artifact)
            except ArtifactError as exc:
                assert "\n" not in str(exc)
                refused += 1
                continue
            spec = art.metadata.input  # what the runtime reads is still well-typed
            assert 1 <= spec.height <= 8192 and all(np.isfinite(spec.mean)) and min(spec.std) > 0
            assert 0 <= art.metadata.postprocess["blur_sigma"] <= 64
    write_metadata(graph_artifact, pristine)
    Artifact.load(graph_artifact)
    assert refused > len(paths)  # most hostile values are refused


def test_fuzzed_graph_and_header_bytes_never_escape_as_other_exceptions(graph_artifact):
    rng = np.random.default_rng(7)
    for name, span in (("model.onnx", None), ("bank.npy", 128)):
        path = graph_artifact / name
        good = path.read_bytes()
        for _ in range(60):
            data = bytearray(good)
            for i in rng.integers(0, span or len(data), 4):
                data[i] = int(rng.integers(0, 256))
            path.write_bytes(bytes(data))
            rewrite(graph_artifact, lambda raw: raw["files"].__setitem__(name, sha256_file(path)))
            try:
                Artifact.load(graph_artifact)
            except ArtifactError as exc:
                assert "\n" not in str(exc)
        path.write_bytes(good)
        rewrite(graph_artifact, lambda raw: raw["files"].__setitem__(name, sha256_file(path)))


def test_reread_thresholds_follows_a_recalibration_but_not_a_new_contract(graph_artifact):
    art = Artifact.load(graph_artifact)
    with Artifact.edit(graph_artifact) as edit:
        edit.meta["thresholds"]["image"] = 7.0
    assert art.reread_thresholds()["image"] == 7.0
    field("postprocess.blur_sigma", 2.0)(graph_artifact)  # restamped: a valid, different contract
    with pytest.raises(ArtifactError, match="the contract changed since the artifact was loaded"):
        art.reread_thresholds()


def test_concurrent_edits_one_wins_the_other_is_refused(graph_artifact):
    """Two edits read the same metadata; the one that writes second must be refused, not overwrite."""
    first, second = Artifact.edit(graph_artifact), Artifact.edit(graph_artifact)
    a, b = first.__enter__(), second.__enter__()
    a.meta["thresholds"]["image"] = 11.0
    b.meta["thresholds"]["image"] = 22.0
    first.__exit__(None, None, None)
    with pytest.raises(ArtifactError, match="changed since it was read"):
        second.__exit__(None, None, None)
    assert Artifact.load(graph_artifact).metadata.thresholds["image"] == 11.0


def test_schema_sets_match_what_the_runtime_implements():
    """The schema's known sets are the runtime's tables: a new reduction or head must be added to both."""
    from anomedge.artifact import schema
    from anomedge.scoring import postprocess
    from anomedge.scoring.heads import HEADS
    from anomedge.runtime.preprocess import _INTERPOLATION

    assert set(schema.REDUCTIONS) == set(postprocess.REDUCTIONS)
    assert set(schema.KINDS) == set(HEADS)
    assert set(schema.INTERPOLATIONS) == set(_INTERPOLATION)
    assert len(CASES) >= 25
