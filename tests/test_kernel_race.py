"""The host kNN kernel race on the target: cached beside the artifact (never in its hashed files),
reused, re-raced when the bank changes, falling back to the user cache dir and to no cache at all."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from anomedge.artifact import Artifact, write_metadata
from anomedge.errors import ArtifactError
from anomedge.runtime.kernel_race import CACHE_DIR, cache_candidates, choose_kernel
from anomedge.runtime.pipeline import Inspector
from anomedge.scoring.heads import KNN_GRAPH, KNN_KERNELS

from conftest import rehash


def test_cache_is_written_outside_the_hashed_files_and_reused(artifact_copy, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    artifact = Artifact.load(artifact_copy)
    first = choose_kernel(artifact)
    assert first.how == "raced" and set(first.ms) == set(KNN_KERNELS) and first.kernel == min(first.ms, key=first.ms.get)
    path = artifact_copy / CACHE_DIR / f"kernel-{cache_candidates(artifact)[0].name.split('-', 1)[1]}"
    assert first.cache == str(path) and path.is_file()
    assert not any(name.startswith(CACHE_DIR) for name in artifact.metadata.files)
    Artifact.load(artifact_copy)  # the cache does not disturb the hash checks
    entry = json.loads(path.read_text())
    loser = "numpy" if first.kernel == "onnxruntime" else "onnxruntime"
    path.write_text(json.dumps({**entry, "kernel": loser}))  # a cached answer is used as is, not raced again
    again = choose_kernel(artifact)
    assert (again.how, again.kernel) == ("cached", loser)
    with Inspector(artifact, "onnxruntime") as inspector:
        assert inspector.knn_kernel == loser
    with Inspector(artifact, "onnxruntime", knn_kernel=first.kernel) as inspector:  # --knn-kernel still overrides
        assert inspector.knn_kernel == first.kernel


def test_a_changed_bank_is_raced_again(artifact_copy, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    choose_kernel(Artifact.load(artifact_copy))
    bank = np.load(artifact_copy / "bank.npy")
    np.save(artifact_copy / "bank.npy", bank[::-1].copy())
    rehash(artifact_copy, "bank.npy")
    assert choose_kernel(Artifact.load(artifact_copy)).how == "raced"


def test_read_only_folder_falls_back_to_the_user_cache_then_to_none(artifact_copy, monkeypatch, tmp_path, caplog):
    (artifact_copy / CACHE_DIR).write_text("a file where the cache folder would go")  # unwritable, even as root
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    artifact = Artifact.load(artifact_copy)
    choice = choose_kernel(artifact)
    assert choice.cache is not None and choice.cache.startswith(str(tmp_path / "user-cache"))
    assert choose_kernel(artifact).how == "cached"
    blocked = tmp_path / "blocked"
    blocked.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    with caplog.at_level(logging.WARNING, logger="anomedge"):
        nowhere = choose_kernel(artifact)
    assert nowhere.how == "raced" and nowhere.cache is None and "no writable cache" in caplog.text


def test_old_artifact_without_knn_graph(artifact_copy, caplog):
    import os

    meta = json.loads((artifact_copy / "metadata.json").read_text())
    del meta["files"][KNN_GRAPH]
    meta["scoring"]["kernel"] = "onnxruntime"
    write_metadata(artifact_copy, meta)  # as an older exporter wrote it (spec re-hashed)
    os.remove(artifact_copy / KNN_GRAPH)
    artifact = Artifact.load(artifact_copy)
    choice = choose_kernel(artifact)  # the host kernels still race; the graph kernel cannot
    assert choice.how.startswith("raced (no knn.onnx") and set(choice.ms) == set(KNN_KERNELS) - {"onnxruntime"}
    with pytest.raises(ArtifactError, match="python -m anomedge.export.writer"):
        Inspector(artifact, "onnxruntime", knn_kernel="onnxruntime")
    from anomedge.scoring.heads import KnnHead

    with caplog.at_level(logging.WARNING, logger="anomedge"):
        head = KnnHead(artifact)  # the recorded kernel cannot run: numpy, same distances, said once
    assert head.kernel == "numpy" and "no knn.onnx" in caplog.text
