"""Drift watch and ignore masks on real ELPV cells: when does the alarm come, what does each cost per frame.

    python benchmarks/drift_masks.py ARTIFACT [--calib 100] [--stream 100] [--window 100] [--json out.json]

Works on a copy of ARTIFACT: calibrates it (quantile, q = 0.99) on ``--calib`` held-out ELPV cells
(cells 40…), streams ``--stream`` further cells as they are, then the same cells unchanged (control),
darkened ×0.5, blurred (Gaussian σ = 2.5 px) or at half contrast, and reports per shift the
first frame after the shift with a drift alarm, the checks in alarm and the figures at the end; then the
per-frame cost of ``DriftWatch.update`` and of the masked postprocess vs the plain one (ms, median of the
stream). Timings depend on the machine: state the CPU and whether it was quiet.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from anomedge.artifact import Artifact  # noqa: E402
from anomedge.calibrate.apply import calibrate  # noqa: E402
from anomedge.cli.mask import write_mask  # noqa: E402
from anomedge.runtime.pipeline import Inspector  # noqa: E402
from anomedge.runtime.runner import Runner  # noqa: E402
from anomedge.runtime.sources import Frame  # noqa: E402

SHIFTS = {"none": lambda f: f, "brightness x0.5": lambda f: (f * 0.5).astype(np.uint8),
          "blur sigma 2.5": lambda f: cv2.GaussianBlur(f, (0, 0), 2.5),
          "contrast x0.5": lambda f: (0.5 * f.astype(np.float32) + 0.5 * f.mean()).astype(np.uint8)}


def elpv(n: int) -> list[Path]:
    from conftest import elpv_image_paths

    return elpv_image_paths(n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact")
    parser.add_argument("--calib", type=int, default=100)
    parser.add_argument("--stream", type=int, default=100)
    parser.add_argument("--window", type=int, default=100)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    paths = elpv(40 + args.calib + args.stream)
    calib, stream = paths[40:40 + args.calib], paths[40 + args.calib:]
    good = [cv2.imread(str(p)) for p in stream]
    out: dict = {"calib": len(calib), "stream": len(stream), "window": args.window, "shifts": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "artifact"
        shutil.copytree(args.artifact, root, ignore=shutil.ignore_patterns(".cache", "signature.json"))
        calibrate(root, calib, "quantile", q=0.99)
        for name, shift in SHIFTS.items():
            with Inspector(Artifact.load(root), "onnxruntime") as inspector:
                runner = Runner(inspector, watch_thresholds=False,
                                drift_options={"window": args.window, "min_frames": min(50, args.window)})
                records, costs = [], []
                for i, frame in enumerate(good + [shift(f) for f in good]):
                    record, image, _ = runner.inspect(Frame("bench", i, float(i), frame))
                    start = time.perf_counter()
                    runner.drift.update(record, image)
                    costs.append((time.perf_counter() - start) * 1e3)
                    records.append(runner.drift.alarm)
            n = len(good)
            after = [i for i, a in enumerate(records[n:]) if a]
            out["shifts"][name] = {"alarms_before_shift": sum(1 for a in records[:n] if a),
                                   "first_alarm_frames_after_shift": after[0] if after else None,
                                   "checks_at_end": runner.drift.status()["in_alarm"],
                                   "status_at_end": runner.drift.status(),
                                   "drift_update_ms_median": round(statistics.median(costs), 3)}
            print(f"{name:18s} alarms before: {out['shifts'][name]['alarms_before_shift']:3d}  first alarm "
                  f"{out['shifts'][name]['first_alarm_frames_after_shift']} frames after the shift  checks at end: "
                  f"{', '.join(out['shifts'][name]['checks_at_end']) or '-'}  update {statistics.median(costs):.3f} ms")
        meta = Artifact.load(root).metadata
        frames = good[:32]
        with Inspector(Artifact.load(root), "onnxruntime") as inspector:
            s = inspector.stages
            patch = s.score(s.infer(s.preprocess(frames)))
            plain = _time(lambda: s.postprocess(patch))
        mask = np.zeros((meta.input.height, meta.input.width), np.uint8)
        mask[: meta.input.height // 3, : meta.input.width // 3] = 1
        write_mask(root, mask)
        with Inspector(Artifact.load(root), "onnxruntime") as inspector:
            masked = _time(lambda: inspector.stages.postprocess(patch, inspector.ignore_mask))
        out["postprocess_ms_per_frame"] = {"plain": round(plain / len(frames), 4), "masked": round(masked / len(frames), 4),
                                           "input": f"{meta.input.width}x{meta.input.height}"}
        print(f"postprocess per frame ({meta.input.width}×{meta.input.height}): plain {plain / len(frames):.4f} ms, "
              f"with an ignore mask {masked / len(frames):.4f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


def _time(fn, repeats: int = 20) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


if __name__ == "__main__":
    main()
