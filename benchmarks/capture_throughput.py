"""Throughput of ``ad-run`` with the capture thread vs without (frames/s), same video, same artifact.

    .venv/bin/python benchmarks/capture_throughput.py ARTIFACT [--frames 2000] [--size 640x480] [--repeats 2]

A looping MJPG .avi of ELPV cells resized to --size (decoding cost grows with it, as with a real
camera); ``ad-run --loop --max-frames N --policy all`` with ``--capture-thread`` (decode on a
background thread, overlapping inference) and ``--no-capture-thread`` (decode then infer, in turn).
Reports the best of --repeats runs as frames/s from the records' timestamps (start-up excluded).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).parent))
from soak import elpv_cells  # noqa: E402


def write_video(path: Path, size: tuple[int, int], cells: int = 30) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, size)
    for p in elpv_cells(cells):
        writer.write(cv2.resize(cv2.imread(str(p), cv2.IMREAD_COLOR), size))
    writer.release()
    return path


def fps(artifact: str, video: Path, frames: int, thread: bool, out: Path) -> float:
    jsonl = out / f"t{int(thread)}.jsonl"
    jsonl.unlink(missing_ok=True)
    cmd = [sys.executable, "-c", "from anomedge.cli.run import main; main()", artifact, "--source", str(video), "--loop",
           "--max-frames", str(frames), "--policy", "all", "--jsonl", str(jsonl), "--quiet",
           "--capture-thread" if thread else "--no-capture-thread"]
    subprocess.run(cmd, check=True, capture_output=True)
    stamps = [json.loads(line)["timestamp"] for line in jsonl.read_text().splitlines()]
    skip = len(stamps) // 10  # warm-up
    return (len(stamps) - 1 - skip) / (stamps[-1] - stamps[skip])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact")
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        video = write_video(Path(tmp) / "loop.avi", (width, height))
        rows = {}
        for thread in (False, True):
            rows[thread] = max(fps(args.artifact, video, args.frames, thread, Path(tmp)) for _ in range(args.repeats))
    print(f"| capture | frames/s ({args.size}, {args.frames} frames, best of {args.repeats}) |")
    print("|---|---|")
    print(f"| no capture thread | {rows[False]:.1f} |")
    print(f"| capture thread | {rows[True]:.1f} |")
    print(f"speed-up x{rows[True] / rows[False]:.2f}")


if __name__ == "__main__":
    main()
