"""Many cameras, one Triton server; an archive on Ray. Prints two markdown tables.

    ANOMEDGE_TRITON_PYTHON=.venv-triton/bin/python .venv/bin/python benchmarks/serve_triton.py \
        [--artifact DIR | --image-size 128] [--clients 1,4,8] [--frames-per-client 48] \
        [--max-batch 8] [--queue-delay-us 2000] [--instances 1] [--archive-size 240] [--actors 2]

1. Serving: ad-triton writes the python-backend repository of the artifact, a real tritonserver
   (nvidia-pytriton, python backend, CPU) serves it on 127.0.0.1, and 1, 4, 8 camera clients (threads
   of this process, each with its own ``Inspector(backend="triton")`` over HTTP, one frame per request,
   as ``ad-run --backend triton`` sends them) run concurrently. Per row: frames/s over all clients,
   per-frame latency p50 / p99 (preprocess + request + reduction), the mean batch size Triton formed
   (inference_count / execution_count from /v2/models/…/stats) and whether every decision equals the
   local runtime's on the same frame (with the largest relative score difference). Baseline row:
   the local runtime in this process, one frame at a time.
2. Archive: ``ad-run --source FOLDER`` (one process) vs ``ad-rescore FOLDER`` (Ray Data, local
   cluster, ``--actors`` actors, 1 thread each), wall time of each command including start-up, and
   whether their records agree (labels, scores rtol 1e-6).

Without --artifact a PatchCore artifact is fitted on 40 ELPV cells at --image-size (needs the export
extra). Frames: ELPV cells (the elpv-dataset package).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from anomedge.artifact import Artifact
from anomedge.runtime.pipeline import Inspector
from anomedge.runtime.preprocess import read_image
from anomedge.serving.local_server import LocalTriton, batch_stats
from anomedge.serving.triton import ServingOptions, write_repository

ROOT = Path(__file__).resolve().parents[1]


def elpv_paths() -> list[Path]:
    spec = importlib.util.find_spec("elpv_dataset")
    if spec is None:
        sys.exit("needs the elpv-dataset package (pip install 'anomedge[export]')")
    return sorted((Path(spec.origin).parent / "data" / "images").glob("*.png"))


def artifact_for(args, work: Path) -> Artifact:
    if args.artifact:
        return Artifact.load(args.artifact)
    from anomedge.export.fit import fit_and_export

    report = fit_and_export(elpv_paths()[:40], "patchcore", {"image_size": args.image_size, "coreset_fraction": 0.1},
                            work / "artifact", holdout=0.2, progress=False)
    return report.artifact


def percentiles(values: list[float]) -> tuple[float, float]:
    return float(np.percentile(values, 50)), float(np.percentile(values, 99))


def local_row(artifact: Artifact, frames: list[np.ndarray]):
    with Inspector(artifact, "onnxruntime") as local:
        local.inspect([frames[0]])  # warm-up
        latencies, scores = [], []
        start = time.perf_counter()
        for frame in frames:
            t0 = time.perf_counter()
            scores.append(float(local.inspect([frame]).scores[0]))
            latencies.append((time.perf_counter() - t0) * 1e3)
        wall = time.perf_counter() - start
        labels = [local.decide(s) for s in scores]
    return np.array(scores), labels, (len(frames) / wall, *percentiles(latencies))


def camera_rows(server: LocalTriton, artifact: Artifact, frames, reference, labels, clients_list, per_client):
    rows = []
    for clients in clients_list:
        before = batch_stats(server.statistics("anomedge"))
        latencies: list[float] = []
        mismatches, worst = [0], [0.0]
        lock = threading.Lock()
        barrier = threading.Barrier(clients)

        def camera(offset: int) -> None:
            with Inspector(artifact, "triton", url=server.http_url) as remote:
                remote.inspect([frames[0]])  # connect + warm-up, outside the timed part
                barrier.wait()
                for i in range(per_client):
                    k = (offset + i) % len(frames)
                    t0 = time.perf_counter()
                    score = float(remote.inspect([frames[k]]).scores[0])
                    ms = (time.perf_counter() - t0) * 1e3
                    with lock:
                        latencies.append(ms)
                        worst[0] = max(worst[0], abs(score - reference[k]) / max(abs(reference[k]), 1e-12))
                        mismatches[0] += remote.decide(score) != labels[k]

        threads = [threading.Thread(target=camera, args=(c * 7,)) for c in range(clients)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
        after = batch_stats(server.statistics("anomedge"))
        requests = after["inference_count"] - before["inference_count"]
        executions = after["execution_count"] - before["execution_count"]
        rows.append((clients, clients * per_client / wall, *percentiles(latencies),
                     requests / executions if executions else 0.0, mismatches[0] == 0, worst[0]))
    return rows


def run_cli(module: str, *args) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"from anomedge.cli.{module} import main; main()", *map(str, args)],
                   check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return time.perf_counter() - start


def archive_rows(artifact: Artifact, work: Path, size: int, actors: int):
    folder = work / "archive"
    folder.mkdir()
    for path in elpv_paths()[40:40 + size]:
        shutil.copy(path, folder)
    single = run_cli("run", artifact.root, "--source", folder, "--jsonl", work / "adrun.jsonl", "--quiet")
    ray_s = run_cli("rescore", folder, "--artifact", artifact.root, "--out", work / "rescore.jsonl",
                  "--actors", actors, "--quiet")
    import ray

    from anomedge.serving.rescore import rescore

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:  # the job alone, on a cluster that is already up (as on a standing Ray cluster)
        start = time.perf_counter()
        rescore(str(folder), str(artifact.root), work / "rescore-warm.jsonl", actors=actors)
        warm = time.perf_counter() - start
    finally:
        ray.shutdown()
    a = {r["source"]: r for r in map(json.loads, (work / "adrun.jsonl").read_text().splitlines())}
    b = {r["source"]: r for r in map(json.loads, (work / "rescore.jsonl").read_text().splitlines())}
    same = a.keys() == b.keys() and all(a[k]["label"] == b[k]["label"] and np.isclose(a[k].get("score", 0),
                                        b[k].get("score", 0), rtol=1e-6) for k in a)
    return len(a), single, ray_s, warm, same


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifact", default=None)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--server-python", default=os.environ.get("ANOMEDGE_TRITON_PYTHON", str(ROOT / ".venv-triton/bin/python")))
    ap.add_argument("--clients", default="1,4,8")
    ap.add_argument("--frames-per-client", type=int, default=48)
    ap.add_argument("--frames", type=int, default=32, help="distinct ELPV frames cycled by the clients")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--queue-delay-us", type=int, default=2000)
    ap.add_argument("--instances", type=int, default=1)
    ap.add_argument("--archive-size", type=int, default=240)
    ap.add_argument("--skip-serving", action="store_true", help="only the archive table")
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--label", default="", help="appended to the table titles, e.g. 'contended'")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="anomedge-serve-bench-"))
    try:
        artifact = artifact_for(args, work)
        frames = [read_image(p) for p in elpv_paths()[40:40 + args.frames]]
        cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
        title = f"{artifact.metadata.detector} {artifact.metadata.input.height}², {os.cpu_count()} cores ({cpu})"
        label = f" — {args.label}" if args.label else ""
        if not args.skip_serving:
            reference, labels, (fps, p50, p99) = local_row(artifact, frames)
            write_repository(artifact.root, work / "repo", ("python",),
                             ServingOptions(args.max_batch, args.instances, args.queue_delay_us))
            with LocalTriton(work / "repo", python=args.server_python, pythonpath=str(ROOT)) as server:
                rows = camera_rows(server, artifact, frames, reference, labels,
                                   [int(c) for c in args.clients.split(",")], args.frames_per_client)
            print(f"\n### One Triton server, N camera clients ({title}; max_batch {args.max_batch}, queue delay "
                  f"{args.queue_delay_us} µs, {args.instances} instance){label}\n")
            print("| clients | frames/s | p50 ms | p99 ms | mean batch formed | decisions = local | max rel. Δscore |")
            print("|---:|---:|---:|---:|---:|:---:|---:|")
            print(f"| local runtime (1, no server) | {fps:.1f} | {p50:.1f} | {p99:.1f} | – | – | – |")
            for clients, f, a, b, batch, same, worst in rows:
                print(f"| {clients} | {f:.1f} | {a:.1f} | {b:.1f} | {batch:.2f} | {'yes' if same else 'NO'} | {worst:.1e} |")
        n, single, ray_s, warm, same = archive_rows(artifact, work, args.archive_size, args.actors)
        print(f"\n### Archive of {n} frames: ad-run vs ad-rescore ({title}){label}\n")
        print("| command | wall s (incl. start-up) | frames/s | records = ad-run |")
        print("|---|---:|---:|:---:|")
        print(f"| ad-run --source (1 process) | {single:.1f} | {n / single:.1f} | – |")
        print(f"| ad-rescore (Ray local cluster, {args.actors} actors) | {ray_s:.1f} | {n / ray_s:.1f} | {'yes' if same else 'NO'} |")
        print(f"| rescore() job on a running cluster ({args.actors} actors) | {warm:.1f} | {n / warm:.1f} | – |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
