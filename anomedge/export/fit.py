"""Fit a detector on a data split, export the artifact, and set its default threshold.

A held-out fraction of the good training images (default 10 %) is scored through the exported
runtime (onnxruntime) — not through torch — to set the default image threshold (quantile 0.99 of
those scores). The threshold lives in metadata; ``ad-calibrate`` replaces it without a re-export.

With a ``TilingSpec`` (``ad-export --tile``) the detector is fitted on the tiles of the fit images
(``runtime.tiling`` grid, written as lossless PNG to a temporary folder, at most ``MAX_FIT_TILES``:
a seeded subsample beyond), the golden frames are tiles, the ``tiling`` block is recorded (hashed
contract), and the held-out images are scored whole, tiled, as the runtime will score them.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..artifact import Artifact
from ..errors import InputError
from ..calibrate.metrics import Rate
from ..calibrate.thresholds import MIN_HOLDOUT, resolution_warning
from ..models.detector import get_detector
from ..runtime.pipeline import Inspector
from ..runtime.preprocess import read_image
from ..runtime.tiling import TilingSpec, cut
from .writer import write_detector

MAX_FIT_TILES = 20000


@dataclass
class ExportReport:
    artifact: Artifact
    fit_seconds: float
    export_seconds: float
    n_fit: int
    n_holdout: int
    threshold: float | None
    warnings: list[str] = field(default_factory=list)
    """Human sentences about how far the default threshold can be trusted (few held-out images)."""


def split_holdout(paths: Sequence[Path], fraction: float, seed: int = 0) -> tuple[list[Path], list[Path]]:
    """Seeded split of good images into (fit, holdout)."""
    if not 0 <= fraction < 1:
        raise InputError(f"holdout fraction {fraction}: expected a value in [0, 1)")
    order = np.random.default_rng(seed).permutation(len(paths))
    n_hold = int(round(len(paths) * fraction))
    if n_hold and len(paths) - n_hold < 1:
        raise InputError(f"{len(paths)} good images: too few to hold {fraction:.0%} out; lower --holdout")
    hold = sorted(order[:n_hold])
    fit = sorted(order[n_hold:])
    return [paths[i] for i in fit], [paths[i] for i in hold]


def holdout_threshold(artifact: Artifact, holdout: Sequence[Path], quantile: float) -> dict[str, Any]:
    """Score the held-out good images on onnxruntime → the thresholds block (quantile method)."""
    with Inspector(artifact, "onnxruntime") as inspector:
        scores = np.concatenate([inspector.inspect([read_image(p)]).scores for p in holdout])
    return {"image": float(np.quantile(scores, quantile)), "pixel": None, "method": "quantile",
            "params": {"q": quantile, "source": "holdout of the training good images", "n_good": int(len(scores))},
            "good_scores": {"min": float(scores.min()), "median": float(np.median(scores)), "max": float(scores.max())}}


def holdout_warnings(n_holdout: int, quantile: float, out: str | Path) -> list[str]:
    """Warnings when ``n_holdout`` held-out good images are too few for a trustworthy default threshold."""
    fix = f"set it on more good images: ad-calibrate {out} --good PATH"
    if n_holdout == 0:
        return [f"no held-out good images (--holdout 0): no default threshold; {fix}"]
    if n_holdout >= MIN_HOLDOUT:
        return []
    upper = Rate(0, n_holdout).interval[1]
    text = (f"default threshold from only {n_holdout} held-out good images (fewer than {MIN_HOLDOUT}): even with "
            f"0 of {n_holdout} rejected the false-reject rate may be up to {100 * upper:.0f} % (95 %)")
    if resolution_warning(n_holdout, 1 - quantile, ""):
        text += f", and their {quantile:g} quantile is about their highest score"
    return [f"{text}; {fix}"]


def _type_name(default: Any) -> tuple[tuple[type, ...], str] | None:
    """(accepted types, words) for a config default; None accepts anything (a None default)."""
    for kind, accepted, words in ((bool, (bool,), "true or false"), (int, (int,), "a whole number"),
                                  (float, (int, float), "a number"), (str, (str,), "a string"),
                                  (dict, (dict,), "a JSON object"), ((list, tuple), (list, tuple), "a JSON list")):
        if isinstance(default, kind):
            return accepted, words
    return None


def check_params(detector: str, params: dict[str, Any]) -> None:
    """Unknown keys and values of the wrong type are an InputError naming the parameter, before any data
    is loaded (``--param coreset_fraction=abc``)."""
    cls = get_detector(detector)
    fields = {f.name: f for f in dataclasses.fields(cls.config_class)}
    unknown = sorted(set(params) - set(fields))
    if unknown:
        raise InputError(f"{detector}: unknown parameter(s) {', '.join(unknown)}; valid: {', '.join(sorted(fields))}")
    for key, value in params.items():
        f = fields[key]
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        expected = _type_name(default)
        if expected is None or (value is None and "None" in str(f.type)):
            continue
        accepted, words = expected
        if not isinstance(value, accepted) or (isinstance(value, bool) and bool not in accepted):
            raise InputError(f"{detector}: --param {key}={value!r}: expected {words} (default {json.dumps(default)})")


def build_detector(detector: str, params: dict[str, Any], progress: bool | None = None):
    """The unfitted detector, every parameter checked (names, types, then the detector's own ranges)."""
    check_params(detector, params)
    return get_detector(detector).from_params(params, progress=progress)


def _say(progress: bool | None, text: str) -> None:
    """A stage line on stderr unless progress is off (a step whose inner progress cannot be shown)."""
    if progress is not False:
        print(text, file=sys.stderr, flush=True)


def write_tiles(paths: Sequence[Path], spec: TilingSpec, folder: Path, max_tiles: int = MAX_FIT_TILES,
                seed: int = 0, progress: bool | None = None) -> tuple[list[Path], dict[str, Any]]:
    """Cut every image of ``paths`` into ``spec``'s grid and write the tiles as PNG into ``folder``
    (at most ``max_tiles``: a seeded subsample of each image's tiles beyond) → (tile paths, what to
    record: ``n_fit_tiles``, ``fit_frames`` and ``fit_frame_size`` [H, W] when all images share one)."""
    import cv2

    from ..progress import steps

    per_image = max(1, max_tiles // max(1, len(paths)))
    rng = np.random.default_rng(seed)
    out, sizes = [], set()
    for i, path in enumerate(steps(paths, len(paths), "tiles", progress)):
        frame = read_image(path)
        tiles, _ = cut(frame, spec)
        sizes.add(frame.shape[:2])
        keep = np.sort(rng.choice(len(tiles), per_image, replace=False)) if len(tiles) > per_image else range(len(tiles))
        for j in keep:
            name = folder / f"{i:05d}_{j:05d}.png"
            if not cv2.imwrite(str(name), tiles[j]):
                raise InputError(f"{name}: cannot write a fit tile; check free space in the temporary folder")
            out.append(name)
    record: dict[str, Any] = {"n_fit_tiles": len(out), "fit_frames": len(paths)}
    if len(sizes) == 1:
        record["fit_frame_size"] = [int(v) for v in next(iter(sizes))]
    return out, record


def fit_and_export(train: Sequence[Path], detector: str, params: dict[str, Any], out: str | Path,
                   holdout: float = 0.1, quantile: float = 0.99, seed: int = 0,
                   progress: bool | None = None, model=None, tiling: TilingSpec | None = None) -> ExportReport:
    """Fit (``model`` if given, built and checked beforehand; else built from ``detector`` / ``params``),
    export to ``out``, set the default threshold on the held-out good images. ``tiling``: fit on tiles
    (module docstring)."""
    fit_paths, hold_paths = split_holdout(list(train), holdout, seed)
    model = model if model is not None else build_detector(detector, params, progress)
    with tempfile.TemporaryDirectory(prefix="anomedge-tiles-") as tmp:
        tile_record = None
        if tiling is not None:
            _say(progress, f"cutting {len(fit_paths)} good images into {tiling.tile} px tiles …")
            (Path(tmp) / "fit").mkdir()
            (Path(tmp) / "hold").mkdir()
            fit_on, tile_record = write_tiles(fit_paths, tiling, Path(tmp) / "fit", seed=seed, progress=progress)
            # golden tiles from held-out images first: a tile whose patches are in the bank sits at distance ≈ 0,
            # where the reference's and the runtime's float32 distances differ most (cancellation)
            hold_tiles = write_tiles(hold_paths[:2], tiling, Path(tmp) / "hold", max_tiles=8, seed=seed,
                                     progress=False)[0] if hold_paths else []
            golden_on = [*hold_tiles, *fit_on]
        else:
            fit_on, golden_on = fit_paths, [*hold_paths, *fit_paths]
        start = time.perf_counter()
        model.fit(fit_on)
        fit_seconds = time.perf_counter() - start
        _say(progress, f"exporting {detector} to {out} (ONNX) …")
        start = time.perf_counter()
        artifact = write_detector(model, out, golden_images=golden_on)
        if tile_record is not None:
            with Artifact.edit(artifact.root) as edit:
                edit.meta["tiling"] = {**tiling.to_dict(), **tile_record}
            artifact = edit.artifact
        export_seconds = time.perf_counter() - start
    threshold = None
    if hold_paths:
        _say(progress, f"scoring {len(hold_paths)} held-out good images on onnxruntime for the default threshold …")
        thresholds = holdout_threshold(artifact, hold_paths, quantile)
        notes = holdout_warnings(len(hold_paths), quantile, out)
        if notes:
            thresholds["note"] = notes[0]
        with Artifact.edit(artifact.root) as edit:
            edit.meta["thresholds"] = thresholds
        artifact = edit.artifact
        threshold = thresholds["image"]
    return ExportReport(artifact, fit_seconds, export_seconds, len(fit_paths), len(hold_paths), threshold,
                        holdout_warnings(len(hold_paths), quantile, out))
