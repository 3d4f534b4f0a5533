"""A real tritonserver (nvidia-pytriton's Triton 2.51, python backend) on 127.0.0.1 serving the
repository ad-triton writes: ad-run --backend triton over HTTP and gRPC gives the local runtime's
records (scores rtol 1e-5, identical labels and NG boxes); concurrent camera clients get their own
answers and Triton's statistics show that the dynamic batcher formed batches.

Needs tritonclient here and a server Python (``ANOMEDGE_TRITON_PYTHON``, default ``.venv-triton/bin/python``)
with nvidia-pytriton, numpy < 2, opencv-python-headless < 4.12 and onnxruntime (docs/serving.md).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
pytest.importorskip("tritonclient.http", reason="tritonclient is not installed: pip install 'anomedge[triton]'")
SERVER_ENV = "nvidia-pytriton 'numpy<2' 'opencv-python-headless<4.12' onnxruntime click"


@pytest.fixture(scope="session")  # session: set up (and skip) before the session-scoped artifact is fitted
def server_python() -> str:
    python = os.environ.get("ANOMEDGE_TRITON_PYTHON", str(ROOT / ".venv-triton" / "bin" / "python"))
    probe = subprocess.run([python, "-c", "import pytriton, numpy; assert numpy.__version__ < '2'"],
                           capture_output=True) if Path(python).exists() else None
    if probe is None or probe.returncode != 0:
        pytest.skip(f"no server Python with nvidia-pytriton and numpy<2 at {python}: set ANOMEDGE_TRITON_PYTHON "
                    f"(python -m venv .venv-triton && .venv-triton/bin/pip install {SERVER_ENV})")
    return python


@pytest.fixture(scope="module")
def server(server_python, tiny_artifact, tmp_path_factory):
    from anomedge.serving.local_server import LocalTriton
    from anomedge.serving.triton import ServingOptions, write_repository

    repo = tmp_path_factory.mktemp("triton") / "repo"
    # A 20 ms queue delay: concurrent requests surely meet in one batch on a busy 2-core machine.
    write_repository(tiny_artifact.root, repo, ("python",), ServingOptions(max_batch=8, queue_delay_us=20_000), threads=1)
    with LocalTriton(repo, python=server_python, pythonpath=str(ROOT)) as running:
        yield running


@pytest.fixture(scope="module")
def line(elpv_paths, tmp_path_factory):
    folder = tmp_path_factory.mktemp("line")
    for path in elpv_paths[20:28]:
        shutil.copy(path, folder)
    return folder


def _ad_run(*args):
    from click.testing import CliRunner

    from anomedge.cli.run import main

    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def _records(path):
    return {r["source"]: r for r in map(json.loads, Path(path).read_text().splitlines())}


def test_ad_run_processes_through_triton_give_the_local_records(server, tiny_artifact, line, tmp_path):
    _ad_run(tiny_artifact.root, "--source", line, "--jsonl", tmp_path / "local.jsonl", "--quiet")
    local = _records(tmp_path / "local.jsonl")
    assert {r["label"] for r in local.values()} == {"OK", "NG"}  # both decisions are exercised
    # Two camera boxes at once, one over HTTP, one over gRPC: two ad-run processes, one server.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    boxes = {protocol: subprocess.Popen(
        [sys.executable, "-c", "from anomedge.cli.run import main; main()", str(tiny_artifact.root), "--source", str(line),
         "--backend", "triton", "--url", url, "--protocol", protocol, "--jsonl", str(tmp_path / f"{protocol}.jsonl"),
         "--quiet"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for protocol, url in (("http", server.http_url), ("grpc", server.grpc_url))}
    for protocol, box in boxes.items():
        output, _ = box.communicate(timeout=300)
        assert box.returncode == 0, output
        remote = _records(tmp_path / f"{protocol}.jsonl")
        assert remote.keys() == local.keys()
        for source, record in local.items():
            np.testing.assert_allclose(remote[source]["score"], record["score"], rtol=1e-5)
            assert remote[source]["label"] == record["label"] and remote[source]["threshold"] == record["threshold"]
            assert remote[source].get("boxes") == record.get("boxes")


def test_ad_run_without_url_is_one_line(tiny_artifact, line):
    from click.testing import CliRunner

    from anomedge.cli.run import main

    result = CliRunner().invoke(main, [str(tiny_artifact.root), "--source", str(line), "--backend", "triton"])
    assert result.exit_code == 2 and "needs --url HOST:PORT" in result.output


def test_concurrent_cameras_are_batched(server, tiny_artifact, line):
    from anomedge.runtime.pipeline import Inspector
    from anomedge.runtime.preprocess import read_image
    from anomedge.serving.local_server import batch_stats

    frames = [read_image(p) for p in sorted(line.iterdir())]
    with Inspector(tiny_artifact, "onnxruntime", threads=1) as local:
        expected = np.array([local.inspect([f]).scores[0] for f in frames])
    before = batch_stats(server.statistics("anomedge"))

    def camera(_):
        with Inspector(tiny_artifact, "triton", url=server.http_url) as remote:
            return np.array([remote.inspect([f]).scores[0] for f in frames])

    cameras = 8
    with ThreadPoolExecutor(cameras) as pool:
        results = list(pool.map(camera, range(cameras)))
    for scores in results:
        np.testing.assert_allclose(scores, expected, rtol=1e-5)
    after = batch_stats(server.statistics("anomedge"))
    requests = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    assert requests == cameras * len(frames)
    assert executions < requests and max(after["batch_sizes"]) > 1  # the dynamic batcher joined requests


def test_client_refuses_another_artifact_and_unknown_models(server, tiny_artifact):
    import dataclasses

    from anomedge.artifact import Artifact
    from anomedge.errors import ArtifactError, BackendUnavailable
    from anomedge.runtime.backends.triton import TritonBackend

    meta = tiny_artifact.metadata
    other = Artifact(tiny_artifact.root, dataclasses.replace(meta, spec_sha256={**meta.spec_sha256, "files": "0" * 64}))
    with pytest.raises(ArtifactError, match="serves artifact"):
        TritonBackend(other, url=server.http_url).open()
    with pytest.raises(BackendUnavailable, match="'nope' is not ready"):
        TritonBackend(tiny_artifact, url=server.http_url, model="nope").open()


def test_a_server_lost_mid_run_gives_error_records(server_python, tiny_artifact, line, tmp_path):
    """Fail closed: frames the server cannot answer are ERROR records, never OK, and the run goes on."""
    from anomedge.runtime.pipeline import Inspector
    from anomedge.runtime.runner import Runner
    from anomedge.runtime.sources import FolderSource
    from anomedge.serving.local_server import LocalTriton
    from anomedge.serving.triton import write_repository

    write_repository(tiny_artifact.root, tmp_path / "repo", ("python",), threads=1)
    own = LocalTriton(tmp_path / "repo", python=server_python, pythonpath=str(ROOT)).start()
    try:
        frames = list(FolderSource(line))[:3]
        with Inspector(tiny_artifact, "triton", url=own.http_url, timeout_s=5) as remote:
            runner = Runner(remote)
            first = runner.process(frames[0])
            own.stop()
            lost = [runner.process(frame) for frame in frames[1:]]
    finally:
        own.stop()
    assert first["label"] in ("OK", "NG")
    assert [r["label"] for r in lost] == ["ERROR", "ERROR"] and all("inference failed" in r["error"] for r in lost)
    assert runner.summary.errors == 2 and runner.summary.frames == 3
