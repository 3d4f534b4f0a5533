"""NG evidence: regions of the thresholded anomaly map, overlays (heatmap blended on the frame, boxes
drawn) and the raw frame saved for people and for re-calibration.

- ``frame_map(anomaly_map (h,w), (H,W))`` → (H,W) float32, the map at frame resolution.
- ``regions(map (H,W), threshold, min_area)`` → ``[[x, y, w, h], ...]`` boxes of the connected
  components of ``map > threshold`` (8-connectivity), largest first.
- The heatmap's colour range is ``runtime.decision.Decision.heat_range``.
- ``EvidenceWriter(folder, save_every)``: checks at start-up that ``folder`` is writable;
  ``save(frame, map, record)`` writes ``<stem>_<index>_overlay.png`` and ``<stem>_<index>_raw.png``
  for NG, the raw frame of every ``save_every``-th OK frame under ``ok/``; returns the overlay path.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..errors import InputError
from .overlay import overlay

BOX_COLOUR = (0, 0, 255)  # BGR red


def frame_map(anomaly_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    height, width = size
    if anomaly_map.shape[:2] == (height, width):
        return anomaly_map.astype(np.float32, copy=False)
    return cv2.resize(anomaly_map.astype(np.float32, copy=False), (width, height), interpolation=cv2.INTER_LINEAR)


def regions(full_map: np.ndarray, threshold: float, min_area: int = 4) -> list[list[int]]:
    """Boxes [x, y, w, h] (frame pixels) of the connected regions above ``threshold``, largest first."""
    mask = (full_map > threshold).astype(np.uint8)
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    boxes = [stats[i] for i in range(1, count) if stats[i, cv2.CC_STAT_AREA] >= min_area]
    boxes.sort(key=lambda s: -int(s[cv2.CC_STAT_AREA]))
    return [[int(s[0]), int(s[1]), int(s[2]), int(s[3])] for s in boxes]


def draw(frame: np.ndarray, full_map: np.ndarray, boxes: list[list[int]], low: float, high: float,
         ignored: np.ndarray | None = None) -> np.ndarray:
    """(H,W,3) uint8 BGR: heatmap blended on the frame, ``boxes`` drawn in red, ``ignored`` hatched."""
    image = overlay(frame, full_map, low, high, ignored=ignored)
    thickness = max(1, round(max(image.shape[:2]) / 300))
    for x, y, w, h in boxes:
        cv2.rectangle(image, (x, y), (x + w - 1, y + h - 1), BOX_COLOUR, thickness)
    return image


def _stem(source: str) -> str:
    name = source.rstrip("/").rsplit("/", 1)[-1] or "frame"
    name = Path(name).stem if "." in name else name
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:60] or "frame"


class EvidenceWriter:
    def __init__(self, folder: str | Path, save_every: int = 0):
        self.folder = Path(folder)
        self.save_every = max(0, int(save_every))
        self._ok_seen = 0
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            if self.save_every:
                (self.folder / "ok").mkdir(exist_ok=True)
            probe = self.folder / f".write-test-{uuid.uuid4().hex}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise InputError(f"{folder}: cannot write NG evidence there ({exc.strerror}); "
                             "choose a writable --save-ng folder") from exc

    def save(self, frame: np.ndarray, full_map: np.ndarray | None, record: dict[str, Any],
             low: float, high: float, ignored: np.ndarray | None = None) -> str | None:
        """Write the evidence for ``record``; returns the overlay path of an NG frame, else None."""
        stem = f"{_stem(str(record['source']))}_{int(record['index']):08d}"
        if record.get("label") == "NG" and full_map is not None:
            target = self.folder / f"{stem}_overlay.png"
            self._write(target, draw(frame, full_map, record.get("boxes", []), low, high, ignored))
            self._write(self.folder / f"{stem}_raw.png", frame)
            return str(target)
        if record.get("label") == "OK" and self.save_every:
            self._ok_seen += 1
            if self._ok_seen % self.save_every == 0:
                self._write(self.folder / "ok" / f"{stem}.png", frame)
        return None

    @staticmethod
    def _write(path: Path, image: np.ndarray) -> None:
        ok, data = cv2.imencode(".png", image)
        if not ok:
            raise InputError(f"{path}: PNG encoding failed for a {image.shape} {image.dtype} frame")
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(data.tobytes())
        tmp.replace(path)
