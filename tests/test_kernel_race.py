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
    with Inspector(artifact, "onnxruntime") as inspector:  # races whole frames: not the search-only answer
        framed = inspector.knn_kernel
    frame_path = cache_candidates(artifact, "onnxruntime")[0]
    entry = json.loads(frame_path.read_text())
    assert entry["identity"]["race"] == "frame/onnxruntime" and entry["kernel"] == framed
    assert json.loads(path.read_text())["kernel"] == loser  # the search-only answer is kept apart
    other = "numpy" if framed == "onnxruntime" else "onnxruntime"
    frame_path.write_text(json.dumps({**entry, "kernel": other}))
    with Inspector(artifact, "onnxruntime") as inspector:  # the Inspector uses its cached answer as is
        assert inspector.knn_kernel == other
    with Inspector(artifact, "onnxruntime", knn_kernel=framed) as inspector:  # --knn-kernel still overrides
        assert inspector.knn_kernel == framed


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


def test_a_frame_race_bills_each_kernel_for_what_it_does_to_the_next_frame(artifact_copy, monkeypatch, tmp_path):
    """Two fake kernels: 'quick' searches in no time but keeps the cores busy for 20 ms after (as
    OpenBLAS's spinning workers do), so the next companion call (the backbone) waits that long;
    'steady' takes 5 ms and leaves nothing behind. Raced alone, quick wins; raced as frames
    (companion + search), steady wins — and the two answers are cached apart."""
    import time

    import anomedge.runtime.kernel_race as kr

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    busy_until = [0.0]

    class Quick:
        def search(self, q, k):
            busy_until[0] = time.perf_counter() + 0.02

    class Steady:
        def search(self, q, k):
            time.sleep(0.005)

    calls = []

    def companion():
        calls.append(1)
        time.sleep(0.001 + max(0.0, busy_until[0] - time.perf_counter()))

    monkeypatch.setattr(kr, "KNN_KERNELS", {"quick": lambda b, k, g: Quick(), "steady": lambda b, k, g: Steady()})
    artifact = Artifact.load(artifact_copy)
    alone = choose_kernel(artifact)
    frames = choose_kernel(artifact, companion=companion, backend="onnxruntime")
    assert (alone.kernel, alone.how) == ("quick", "raced") and alone.ms["quick"] < 1 < alone.ms["steady"]
    assert (frames.kernel, frames.how) == ("steady", "raced") and frames.ms["quick"] > 20 > frames.ms["steady"]
    assert len(calls) == 2 * kr.PASSES * (kr.WARMUP_RUNS + kr.RACE_RUNS)  # 2 kernels
    assert choose_kernel(artifact, companion=companion, backend="onnxruntime").how == "cached"
    assert choose_kernel(artifact, companion=companion, backend="openvino").how == "raced"  # another backend


@pytest.mark.slow
def test_an_ensemble_races_its_knn_member_on_the_backend(tmp_path, elpv_paths, monkeypatch):
    """The default detector (ensemble) gets the race too: on its kNN member's bank (m1_bank.npy) with the
    backend's own graph as the companion; the Inspector's kNN member runs the winner."""
    from anomedge.export.writer import write_detector
    from anomedge.models.ensemble import Ensemble, EnsembleConfig
    from anomedge.runtime.kernel_race import knn_head

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    model = Ensemble(EnsembleConfig(image_size=64), progress=False).fit(elpv_paths[:12])
    artifact = write_detector(model, tmp_path / "ens")
    assert knn_head(artifact) == ("m1_features", "m1_bank.npy", "m1_knn.onnx", 1)
    with Inspector(artifact, "onnxruntime") as inspector:
        raced = inspector.knn_kernel
        assert inspector.stages.score.heads[1].kernel == raced
    entry = json.loads(cache_candidates(artifact, "onnxruntime")[0].read_text())
    assert entry["kernel"] == raced and set(entry["ms"]) == set(KNN_KERNELS)
    assert entry["identity"] == {"bank": artifact.metadata.files["m1_bank.npy"],
                                 "graph": artifact.metadata.files["m1_knn.onnx"], "k": 1, "race": "frame/onnxruntime"}
