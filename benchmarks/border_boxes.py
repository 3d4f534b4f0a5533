"""Are NG boxes on the defect? Box statistics of ad-run records against a data set's ground-truth masks.

    python benchmarks/border_boxes.py --data synthetic:brick --jsonl run.jsonl   # records of `ad-run --jsonl`
    python benchmarks/border_boxes.py --data synthetic:brick --artifact DIR      # runs the test split itself

For the test split of ``--data`` (MVTec layout with masks) it prints, as one table row per input:

- ``boxes``: NG boxes in all records; ``off-defect``: the share of them that overlap no mask pixel;
  ``at border``: the share of boxes that overlap no defect AND touch the image edge (within ``EDGE`` px);
- ``hit``: defective images with at least one box that overlaps their defect / defective images;
- ``good NG``: good test images labelled NG; ``def NG``: defective images labelled NG.

A box ``[x, y, w, h]`` overlaps the defect iff its rectangle contains a mask pixel (frame pixels).
``--json`` prints the numbers as one JSON object per input instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Iterable

import cv2
import numpy as np

EDGE = 2  # a box within this many pixels of the frame edge "touches the border"


def _masks_by_source(split) -> dict[str, Path | None]:
    """Resolved test path → its mask path (None for good images)."""
    return {str(Path(p).resolve()): (Path(m) if m is not None else None)
            for p, m in zip(split.test, split.test_masks or [None] * len(split.test))}


def box_stats(records: Iterable[dict[str, Any]], masks: dict[str, Path | None],
              labels: dict[str, int]) -> dict[str, Any]:
    """Counts over ``records`` (ad-run decision records) of test images; records of other files are ignored."""
    boxes = off = off_border = hit = def_ng = good_ng = n_def = n_good = 0
    for rec in records:
        key = str(Path(str(rec.get("source", ""))).resolve())
        if key not in labels:
            continue
        defective = labels[key] == 1
        n_def += defective
        n_good += not defective
        if rec.get("label") != "NG":
            continue
        def_ng += defective
        good_ng += not defective
        mask_path = masks.get(key)
        mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE) > 127 if mask_path is not None else None
        shape = mask.shape if mask is not None else cv2.imread(key, cv2.IMREAD_UNCHANGED).shape[:2]
        on_defect = False
        for x, y, w, h in rec.get("boxes", []):
            boxes += 1
            inside = bool(mask[y:y + h, x:x + w].any()) if mask is not None else False
            on_defect |= inside
            if not inside:
                off += 1
                touches = x <= EDGE or y <= EDGE or x + w >= shape[1] - EDGE or y + h >= shape[0] - EDGE
                off_border += touches
        hit += defective and on_defect
    return {"boxes": boxes, "off_defect": off, "off_defect_at_border": off_border,
            "off_defect_share": off / boxes if boxes else float("nan"),
            "border_share": off_border / boxes if boxes else float("nan"),
            "defective": n_def, "defective_hit": hit, "hit_share": hit / n_def if n_def else float("nan"),
            "good": n_good, "good_ng": good_ng, "defective_ng": def_ng}


def run_records(artifact: str, paths: list[Path], backend: str = "onnxruntime") -> list[dict[str, Any]]:
    """The ad-run records of ``paths`` through ``artifact`` (same Runner as ad-run)."""
    from anomedge.artifact import Artifact
    from anomedge.runtime.pipeline import Inspector
    from anomedge.runtime.runner import Runner
    from anomedge.runtime.sources import Frame

    records = []
    with Inspector(Artifact.load(artifact), backend) as inspector:
        runner = Runner(inspector, [records.append])
        for i, path in enumerate(paths):
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            runner.process(Frame(source=str(path), index=i, timestamp=0.0, image=image))
    return records


def row(name: str, s: dict[str, Any]) -> str:
    return (f"| {name} | {s['boxes']} | {s['off_defect']} ({s['off_defect_share']:.0%}) | "
            f"{s['off_defect_at_border']} ({s['border_share']:.0%}) | "
            f"{s['defective_hit']}/{s['defective']} ({s['hit_share']:.0%}) | {s['good_ng']}/{s['good']} | "
            f"{s['defective_ng']}/{s['defective']} |")


HEADER = ("| run | NG boxes | off-defect boxes | off-defect at border | defective images with a box on the defect "
          "| good NG | defective NG |\n|---|---|---|---|---|---|---|")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="synthetic:brick", help="data set spec or MVTec-layout folder (masks)")
    ap.add_argument("--jsonl", action="append", default=[], help="ad-run --jsonl records (repeatable)")
    ap.add_argument("--artifact", action="append", default=[], help="artifact folder to run on the test split")
    ap.add_argument("--json", action="store_true", help="one JSON object per input instead of a table")
    args = ap.parse_args(argv)
    from anomedge.datasets import load_dataset

    split = load_dataset(args.data)
    masks = _masks_by_source(split)
    labels = {str(Path(p).resolve()): int(y) for p, y in zip(split.test, split.test_labels)}
    inputs = [(p, [json.loads(line) for line in Path(p).read_text().splitlines() if line.strip()]) for p in args.jsonl]
    inputs += [(a, run_records(a, list(split.test))) for a in args.artifact]
    if not inputs:
        ap.error("pass --jsonl FILE and/or --artifact DIR")
    if not args.json:
        print(HEADER)
    for name, records in inputs:
        stats = box_stats(records, masks, labels)
        print(json.dumps({"input": name, **stats}) if args.json else row(Path(name).name, stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
