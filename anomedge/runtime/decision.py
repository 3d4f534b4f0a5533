"""The decision: one object that turns an image score into OK / NG / ERROR, and holds everything
else read from the ``thresholds`` block of ``metadata.json`` (numpy only).

``Decision.from_thresholds(thresholds, override=None, on_error="error")`` validates the block:
``image`` / ``pixel`` must be finite numbers (or absent), ``normalization`` a finite
{min, threshold, max} with min < threshold < max (or absent); anything else → ``ArtifactError``
(one line, exit 2). ``override`` is ``--threshold`` (must be finite → ``InputError``).

It fails closed: ``label(score)`` is OK only for a finite score with ``score <= threshold`` under a
finite threshold (``score > threshold`` → NG, the rule everywhere in anomedge). A non-finite score
or a missing threshold gives ``("ERROR", reason)`` — or ``("NG", reason)`` with ``on_error="ng"``.

Fields: ``threshold`` (image threshold in force), ``pixel_threshold`` (for NG boxes; the image
threshold when none is calibrated), ``normalizer`` (a ``Normalizer`` or None), ``heat_range``
(low, high) heatmap colour range, ``since`` (epoch seconds when this decision came into force),
``origin`` ("metadata" or "--threshold").
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field, replace
from typing import Any

from ..calibrate.normalize import Normalizer
from ..errors import ArtifactError, InputError

ON_ERROR = ("error", "ng")


def _finite_or_none(thresholds: dict[str, Any], key: str, where: str) -> float | None:
    value = thresholds.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise ArtifactError(f"{where}thresholds.{key} is {value!r}: expected a finite number; "
                            "run ad-calibrate again or fix metadata.json")
    return float(value)


def check_threshold(value: float | None, option: str = "--threshold") -> float | None:
    """A user-given threshold: None, or a finite number (``InputError`` otherwise)."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{option} {value!r}: expected a finite number, e.g. 1.25") from None
    if not math.isfinite(number):
        raise InputError(f"{option} {value}: expected a finite number, e.g. 1.25 (NaN/inf would pass every part or none)")
    return number


def heat_range(thresholds: dict[str, Any], threshold: float) -> tuple[float, float]:
    """Colour range: the normalisation's [min, max] if calibrated, else [lowest good score, 2·t − low]."""
    norm = thresholds.get("normalization")
    if isinstance(norm, dict) and {"min", "max"} <= set(norm):
        low, high = float(norm["min"]), float(norm["max"])
        if math.isfinite(low) and math.isfinite(high) and low < high:
            return low, high
    good = thresholds.get("good_scores") or {}
    low = float(good.get("min", 0.0)) if isinstance(good, dict) else 0.0
    low = min(low if math.isfinite(low) else 0.0, threshold)
    return low, max(2.0 * threshold - low, low + 1e-6)


@dataclass(frozen=True)
class Decision:
    threshold: float | None
    pixel_threshold: float | None
    normalizer: Normalizer | None
    heat_range: tuple[float, float]
    on_error: str = "error"
    origin: str = "metadata"
    since: float = field(default_factory=time.time)

    @classmethod
    def from_thresholds(cls, thresholds: dict[str, Any] | None, override: float | None = None,
                        on_error: str = "error", where: str = "") -> "Decision":
        """Validate ``thresholds`` (metadata block) and build the decision; ``where`` prefixes errors."""
        if on_error not in ON_ERROR:
            raise InputError(f"--on-error '{on_error}': expected one of {', '.join(ON_ERROR)}")
        if thresholds is None:
            thresholds = {}
        if not isinstance(thresholds, dict):
            raise ArtifactError(f"{where}thresholds is {type(thresholds).__name__}: expected an object")
        override = check_threshold(override)
        image = _finite_or_none(thresholds, "image", where)
        pixel = _finite_or_none(thresholds, "pixel", where)
        normalizer = None
        block = thresholds.get("normalization")
        if block is not None:
            try:
                normalizer = Normalizer.from_dict(block)
            except InputError as exc:
                raise ArtifactError(f"{where}thresholds.normalization: {exc}") from None
        threshold = override if override is not None else image
        if normalizer is not None and threshold is not None and normalizer.min < threshold < normalizer.max:
            normalizer = replace(normalizer, threshold=threshold)  # 0.5 stays the threshold in force
        calibrated = image if image is not None else threshold  # colours stay calibrated under --threshold
        colours = heat_range(thresholds, calibrated if calibrated is not None else 1.0)
        return cls(threshold, pixel if pixel is not None else threshold, normalizer, colours, on_error,
                   "--threshold" if override is not None else "metadata")

    def label(self, score: float) -> tuple[str, str | None]:
        """(label, reason): ("OK", None) / ("NG", None), or ("ERROR" | "NG" under on_error=ng, reason)."""
        failed = "ERROR" if self.on_error == "error" else "NG"
        if self.threshold is None:
            return failed, "no image threshold: run ad-calibrate or pass --threshold"
        try:
            value = float(score)
        except (TypeError, ValueError):
            return failed, f"score {score!r} is not a number"
        if not math.isfinite(value):
            return failed, f"score is {value}: the model gave a non-finite output"
        return ("NG" if value > self.threshold else "OK"), None

    def normalize(self, score: float) -> float | None:
        """Score on the 0..1 scale (threshold → 0.5), None without a normaliser or for a non-finite score."""
        if self.normalizer is None or not math.isfinite(float(score)):
            return None
        return float(self.normalizer(float(score)))

    def as_dict(self) -> dict[str, Any]:
        """What a status page shows: the threshold in force, since when, where it came from."""
        return {"threshold": self.threshold, "pixel_threshold": self.pixel_threshold, "origin": self.origin,
                "since": self.since, "on_error": self.on_error}


METADATA_MAX_BYTES = 16 << 20  # a metadata.json larger than this is not re-read


class ThresholdWatch:
    """Notices a re-calibrated ``metadata.json`` (ad-calibrate rewrites it atomically: a new inode).

    ``poll(current)`` costs one ``os.stat``; when (inode, mtime, size) changed it re-reads the
    thresholds block and returns the new ``Decision`` (``--threshold`` and ``on_error`` kept), or
    None when nothing changed. A rewrite that cannot be read or fails validation keeps ``current``
    and is reported once in ``error`` (the caller logs it).
    """

    def __init__(self, metadata_path, override: float | None = None, on_error: str = "error", artifact=None):
        """``artifact``: the loaded ``Artifact``; when given, the re-read also checks that nothing but
        the thresholds changed (``Artifact.reread_thresholds``: a changed contract needs a restart)."""
        self.path = metadata_path
        self.artifact = artifact
        self.override, self.on_error = override, on_error
        self.error: str | None = None
        self._key = self._stamp()

    def _stamp(self):
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def poll(self, current: Decision) -> Decision | None:
        key = self._stamp()
        if key == self._key or key is None:
            return None
        self._key = key
        try:
            if key[2] > METADATA_MAX_BYTES:
                raise ArtifactError(f"{self.path}: {key[2]} bytes, more than {METADATA_MAX_BYTES}")
            if self.artifact is not None:
                thresholds = self.artifact.reread_thresholds()
            else:
                with open(self.path, "rb") as handle:
                    meta = json.loads(handle.read(METADATA_MAX_BYTES + 1))
                if not isinstance(meta, dict):
                    raise ArtifactError(f"{self.path}: expected a JSON object")
                thresholds = meta.get("thresholds")
            new = Decision.from_thresholds(thresholds, self.override, self.on_error, f"{self.path}: ")
        except (OSError, ValueError, RecursionError, ArtifactError, InputError) as exc:
            self.error = f"{self.path} changed but cannot be used ({exc}); keeping threshold {current.threshold}"
            return None
        self.error = None
        if (new.threshold, new.pixel_threshold, new.normalizer, new.heat_range) == (
                current.threshold, current.pixel_threshold, current.normalizer, current.heat_range):
            return None
        return new
