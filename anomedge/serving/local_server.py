"""A real ``tritonserver`` on 127.0.0.1, from the ``nvidia-pytriton`` wheel (Triton 2.51 + python backend).

For tests, benchmarks and a CPU-only trial: no Docker, no GPU. ``python`` is the interpreter of the
environment the server and its python-backend stub run in: it must have ``nvidia-pytriton``, numpy < 2
(Triton issue #8301: the 2.5x stub answers with empty outputs under numpy 2) and anomedge's base deps;
``pythonpath`` adds a source checkout of anomedge. The stub embeds the Python found first on PATH,
so that environment's ``bin`` is put first.

    with LocalTriton(repo, python=".venv-stub/bin/python") as server:
        server.http_url   # "127.0.0.1:PORT" for ad-run --backend triton --url
        server.statistics("anomedge")   # /v2/models/anomedge/stats
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import BackendUnavailable

HOST = "127.0.0.1"
_PROBE = ("import os, sys, pytriton; print(os.path.dirname(pytriton.__file__)); "
          "print(f'{sys.version_info[0]}.{sys.version_info[1]}')")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def pytriton_home(python: str) -> tuple[Path, str]:
    """(pytriton package folder, "3.X") of the interpreter ``python``; BackendUnavailable if it has no pytriton."""
    try:
        out = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=60)
    except OSError as exc:
        raise BackendUnavailable(f"{python}: cannot run it ({exc})") from exc
    if out.returncode != 0:
        raise BackendUnavailable(f"{python} has no nvidia-pytriton: {python} -m pip install nvidia-pytriton 'numpy<2'")
    home, version = out.stdout.split()
    return Path(home), version


class LocalTriton:
    """``tritonserver --model-repository REPO`` bound to 127.0.0.1 (HTTP, gRPC; metrics off); a context manager."""

    def __init__(self, repository: str | Path, python: str, pythonpath: str | None = None,
                 log_file: str | Path | None = None, extra_args: tuple[str, ...] = ()):
        self.repository = Path(repository).resolve()
        self.python = python
        self.pythonpath = pythonpath
        self.extra_args = extra_args
        self.http_port, self.grpc_port = _free_port(), _free_port()
        self.workspace = Path(tempfile.mkdtemp(prefix="anomedge-triton-"))
        self.log_file = Path(log_file) if log_file else self.workspace / "tritonserver.log"
        self.process: subprocess.Popen | None = None

    @property
    def http_url(self) -> str:
        return f"{HOST}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{HOST}:{self.grpc_port}"

    def start(self, timeout_s: float = 180.0) -> "LocalTriton":
        home, version = pytriton_home(self.python)
        dist = self.workspace / "tritonserver"
        shutil.copytree(home / "tritonserver", dist, ignore=shutil.ignore_patterns("python_backend_stubs"))
        shutil.copy(home / "tritonserver" / "python_backend_stubs" / version / "triton_python_backend_stub",
                    dist / "backends" / "python" / "triton_python_backend_stub")
        env = dict(os.environ)
        env["PATH"] = f"{Path(self.python).parent}:{env.get('PATH', '')}"
        libs = str(home.parent / "nvidia_pytriton.libs")
        env["LD_LIBRARY_PATH"] = f"{env['LD_LIBRARY_PATH']}:{libs}" if env.get("LD_LIBRARY_PATH") else libs
        if self.pythonpath:
            env["PYTHONPATH"] = self.pythonpath
        cmd = [str(dist / "bin" / "tritonserver"), f"--model-repository={self.repository}",
               f"--backend-directory={dist / 'backends'}", f"--cache-directory={dist / 'caches'}",
               f"--http-address={HOST}", f"--http-port={self.http_port}",
               f"--grpc-address={HOST}", f"--grpc-port={self.grpc_port}",
               "--allow-metrics=false", "--log-verbose=0", *self.extra_args]
        self._log = open(self.log_file, "w")
        self.process = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BackendUnavailable(f"tritonserver exited ({self.process.returncode}): {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        self.stop()
        raise BackendUnavailable(f"tritonserver not ready after {timeout_s:.0f} s: {self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        """The server log's error lines (E…, or the last ``chars`` characters when there are none)."""
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return ""
        errors = [line for line in text.splitlines() if line.startswith("E") and "CudaDriverHelper" not in line]
        return ("\n".join(errors) or text)[-chars:]

    def statistics(self, model: str) -> dict:
        """Triton's inference statistics of ``model`` (GET /v2/models/MODEL/stats)."""
        with urllib.request.urlopen(f"http://{self.http_url}/v2/models/{model}/stats", timeout=10) as r:
            return json.load(r)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if getattr(self, "_log", None):
            self._log.close()
        shutil.rmtree(self.workspace / "tritonserver", ignore_errors=True)

    def __enter__(self) -> "LocalTriton":
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def batch_stats(stats: dict) -> dict[str, float]:
    """From a /stats answer: requests (inference_count), executions (execution_count) and the mean
    batch size formed (inference_count / execution_count) of its first model entry."""
    entry = stats["model_stats"][0]
    inferences, executions = int(entry["inference_count"]), int(entry["execution_count"])
    sizes = {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in entry.get("batch_stats", [])}
    return {"inference_count": inferences, "execution_count": executions,
            "mean_batch": inferences / executions if executions else 0.0, "batch_sizes": sizes}
