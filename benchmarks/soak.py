"""Soak: N frames (default 10,000) from a looping video through ``ad-run`` on onnxruntime.

    .venv/bin/python benchmarks/soak.py ARTIFACT [--frames 10000] [--threads 2] [--out DIR]

Writes a looping MJPG .avi of ELPV cells (300x300), runs ``ad-run ARTIFACT --source V --loop
--max-frames N --jsonl D --quiet`` as a child process, samples its resident memory (VmRSS) every
0.5 s, then checks the JSONL: one record per frame, indices 0..N-1 without a gap (zero lost
records). Prints start RSS (after the first 5 % of frames: libraries loaded, buffers warm), end RSS,
the RSS slope over the second half, p50/p99 inspection latency and frames/s. Machine-readable
JSON with --json. OPENBLAS_CORETYPE is left as set.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np


def elpv_cells(n: int) -> list[Path]:
    import importlib.util

    spec = importlib.util.find_spec("elpv_dataset")
    if spec is None:
        sys.exit("elpv-dataset is not installed: pip install 'anomedge[export]'")
    return sorted((Path(spec.origin).parent / "data" / "images").glob("*.png"))[:n]


def write_video(path: Path, cells: int = 30) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (300, 300))
    for p in elpv_cells(cells):
        writer.write(cv2.imread(str(p), cv2.IMREAD_COLOR))
    writer.release()
    return path


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as handle:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))
    except OSError:
        return 0


def soak(artifact: str, frames: int, out: Path, threads: int | None, extra: list[str]) -> dict:
    video = write_video(out / "loop.avi")
    jsonl = out / "soak.jsonl"
    jsonl.unlink(missing_ok=True)
    cmd = [sys.executable, "-c", "from anomedge.cli.run import main; main()", artifact, "--source", str(video), "--loop",
           "--max-frames", str(frames), "--jsonl", str(jsonl), "--quiet", *extra]
    if threads:
        cmd += ["--threads", str(threads)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    samples: list[tuple[int, int]] = []  # (records so far, RSS KiB)
    while proc.poll() is None:
        rss = rss_kib(proc.pid)
        if rss:
            samples.append((count_lines(jsonl), rss))
        time.sleep(0.5)
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"ad-run failed ({proc.returncode}): {stderr.strip()}")
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    indices = [r["index"] for r in records]
    lost = frames - len(records)
    gaps = sum(1 for a, b in zip(indices, indices[1:]) if b != a + 1)
    latencies = np.array([r["ms"]["total"] for r in records if "ms" in r])
    warm = [rss for done, rss in samples if done >= 0.05 * frames]
    half = [(done, rss) for done, rss in samples if done >= 0.5 * frames]
    slope = float(np.polyfit([d for d, _ in half], [r for _, r in half], 1)[0]) * 1000 if len(half) > 2 else float("nan")
    return {"frames": frames, "records": len(records), "lost_records": lost, "index_gaps": gaps,
            "errors": sum(r["label"] == "ERROR" for r in records),
            "rss_start_mib": round(warm[0] / 1024, 1) if warm else None,
            "rss_end_mib": round(warm[-1] / 1024, 1) if warm else None,
            "rss_max_mib": round(max(r for _, r in samples) / 1024, 1) if samples else None,
            "rss_slope_kib_per_1000_frames": round(slope, 1),
            "p50_ms": round(float(np.percentile(latencies, 50)), 2), "p99_ms": round(float(np.percentile(latencies, 99)), 2),
            "fps": round(len(records) / wall, 1), "wall_s": round(wall, 1), "summary": stdout.strip()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact")
    parser.add_argument("--frames", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None, help="Keep the video and JSONL here (default: a temp folder).")
    parser.add_argument("--json", action="store_true")
    args, extra = parser.parse_known_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        out.mkdir(parents=True, exist_ok=True)
        result = soak(args.artifact, args.frames, out, args.threads, extra)
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:32s} {value}")
    ok = result["lost_records"] == 0 and result["index_gaps"] == 0
    print("PASS: every frame has a record" if ok else "FAIL: records lost")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
