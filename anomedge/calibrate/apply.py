"""Calibrate an artifact: score good (and labelled validation) images through the runtime, compute
thresholds and the normaliser, and rewrite ONLY the ``thresholds`` block of ``metadata.json``.

The write goes through ``Artifact.edit``: atomic (temp file, fsync, rename), after everything is
computed, refused if metadata.json changed meanwhile; a failure at any point leaves metadata.json
byte-identical. The previous thresholds are kept in ``history``. ``thresholds`` is the one block
outside the spec hash, so no re-export (and no re-signing) is needed.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..artifact import Artifact
from ..errors import InputError
from ..runtime.decision import Decision
from ..runtime.drift import calibration_block, input_stats
from ..runtime.imageio import DEFAULT_MAX_PIXELS, read_image
from ..runtime.pipeline import Inspector
from .metrics import f1_max
from .normalize import fit_normalizer
from .thresholds import MIN_GOOD, compute_threshold, pixel_threshold_good

HISTORY_LIMIT = 20


@dataclass
class Scored:
    """Scores (N,) and maps (N,H,W) of readable images; ``skipped`` lists (path, reason) of the others;
    ``sizes`` the (height, width) of each kept image; ``stats`` (N,3) their ``runtime.drift.input_stats``."""

    paths: list[Path]
    scores: np.ndarray
    maps: np.ndarray
    skipped: list[tuple[str, str]]
    sizes: list[tuple[int, int]] = field(default_factory=list)
    stats: np.ndarray | None = None


MAX_SKIPPED_SHARE = 0.5
"""More than this share of unusable images means a wrong folder or a broken model, not a few bad files."""


def score_paths(inspector: Inspector, paths: Sequence[Path], max_pixels: int = DEFAULT_MAX_PIXELS,
                progress: bool | None = False, desc: str = "scoring") -> Scored:
    """Score every usable image. One that cannot be read (permission, I/O, corrupt, over the pixel
    budget ``max_pixels``) or whose score is not finite is skipped with a warning naming the file;
    InputError (one line) when none remain or more than ``MAX_SKIPPED_SHARE`` of them were skipped.
    ``progress``: None = a bar on a tty / a few lines when piped (anomedge.progress), False = silent."""
    from ..progress import steps

    kept, scores, maps, skipped, sizes, stats = [], [], [], [], [], []
    for path in steps(paths, len(paths), desc, progress):
        try:
            frame = read_image(path, max_pixels)
            result = inspector.inspect([frame])
            if not np.isfinite(result.scores[0]):
                raise InputError(f"{path}: score is {float(result.scores[0])}: the model gave a non-finite output")
        except InputError as exc:
            skipped.append((str(path), str(exc)))
            warnings.warn(f"skipped {exc}")
            continue
        kept.append(Path(path))
        sizes.append(frame.shape[:2])
        stats.append(input_stats(frame))
        scores.append(result.scores[0])
        maps.append(result.maps[0])
    if not kept:
        raise InputError(f"none of the {len(paths)} images could be used: {skipped[0][1] if skipped else 'no images'}")
    if len(skipped) > MAX_SKIPPED_SHARE * len(paths):
        raise InputError(f"{len(skipped)} of {len(paths)} images could not be used (first: {skipped[0][1]}); "
                         "fix or remove them, or check that the folder is the right one")
    return Scored(kept, np.asarray(scores, np.float32), np.stack(maps), skipped, sizes, np.stack(stats))


def read_masks(mask_paths: Sequence[Path | None], shape: tuple[int, int],
               image_sizes: Sequence[tuple[int, int]] | None = None) -> np.ndarray:
    """Ground-truth masks (N,H,W) bool, resized (nearest) to the map size; None → all good.
    A mask of another aspect ratio cannot be aligned with its map, and with ``image_sizes`` ((h, w)
    per image) a mask must be exactly its image's size: InputError naming it."""
    import cv2

    masks = np.zeros((len(mask_paths), *shape), bool)
    for i, path in enumerate(mask_paths):
        if path is None:
            continue
        mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if mask is None:
            raise InputError(f"{path}: not a readable mask image")
        if image_sizes is not None and tuple(mask.shape[:2]) != tuple(image_sizes[i]):
            h, w = image_sizes[i]
            raise InputError(f"{path}: mask is {mask.shape[1]}×{mask.shape[0]}, its image is {w}×{h}; "
                             "a ground-truth mask must be the size of its image")
        if abs(mask.shape[0] / mask.shape[1] - shape[0] / shape[1]) > 0.01:
            raise InputError(f"{path}: mask is {mask.shape[1]}×{mask.shape[0]}, its aspect ratio does not match the "
                             f"model's {shape[1]}×{shape[0]} maps; masks must be the size of their images")
        masks[i] = cv2.resize(mask, shape[::-1], interpolation=cv2.INTER_NEAREST) > 127
    return masks


def calibrate(artifact_dir: str | Path, good: Sequence[Path], method: str = "quantile",
              val: tuple[Sequence[Path], np.ndarray, Sequence[Path | None] | None] | None = None,
              backend: str = "onnxruntime", max_pixels: int = DEFAULT_MAX_PIXELS, precision: str = "fp32",
              **params: Any) -> dict[str, Any]:
    """Compute and store new thresholds; returns the new thresholds block.

    ``good``: paths of good images; ``val``: (paths, labels (N,) 0/1, mask paths or None) of a labelled
    validation set (needed for ``f1``). ``params``: the method's (``q`` for quantile, ``target`` for frr).
    ``max_pixels``: pixel budget per image (header checked before decoding; larger ones are skipped).
    ``precision`` other than fp32 scores through that model variant (e.g. int8, which shifts scores) and
    stores the block under ``thresholds.variants.<precision>`` (image, pixel, normalization, …), leaving
    the fp32 thresholds as they are. Without masks and without good images the pixel threshold in force
    is kept.
    """
    root = Path(artifact_dir)
    if val is not None and len(val[1]) != len(val[0]):
        raise InputError(f"validation labels: {len(val[1])} labels for {len(val[0])} images; they must pair up")
    with Artifact.edit(root) as edit:
        thresholds = dict(edit.meta.get("thresholds") or {})
        current = thresholds if precision == "fp32" else dict((thresholds.get("variants") or {}).get(precision) or {})
        block = _thresholds_block(edit.artifact, good, method, val, backend, params, max_pixels, precision, current)
        old = dict(current)
        old.pop("variants", None)
        old.pop("drift", None)  # the sample describes the calibration in force only: history stays small
        history = old.pop("history", [])
        block["history"] = ([old] + history)[:HISTORY_LIMIT] if old else history
        if precision == "fp32":
            variants = thresholds.get("variants")
            edit.meta["thresholds"] = {**block, **({"variants": variants} if variants else {})}
        else:
            thresholds["variants"] = {**(thresholds.get("variants") or {}), precision: block}
            edit.meta["thresholds"] = thresholds
    return block


def _thresholds_block(artifact: Artifact, good: Sequence[Path], method: str, val, backend: str,
                      params: dict[str, Any], max_pixels: int, precision: str,
                      current: dict[str, Any]) -> dict[str, Any]:
    """Score the images through the runtime (that ``precision``'s model) and compute the new thresholds
    block (without history); ``current`` is the block in force, whose pixel threshold is kept when there
    is nothing to compute a new one from."""
    if len(good) and len(good) < MIN_GOOD:
        warnings.warn(f"calibrating on {len(good)} good images; {MIN_GOOD}+ are recommended for a stable threshold")
    options = {} if precision == "fp32" else {"precision": precision}
    with Inspector(artifact, backend, **options) as inspector:
        good_scored = score_paths(inspector, good, max_pixels, None, "scoring good images") if len(good) else None
        val_scored = score_paths(inspector, val[0], max_pixels, None, "scoring the validation set") if val else None
    val_pair = None
    if val is not None:
        labels = np.asarray(val[1], np.int8)
        scored_paths = set(val_scored.paths)
        keep = [i for i, p in enumerate(val[0]) if Path(p) in scored_paths]
        val_pair = (labels[keep], val_scored.scores)
    good_scores = good_scored.scores if good_scored else val_pair[1][val_pair[0] == 0]
    result = compute_threshold(method, good_scores, val_pair, **params)
    all_scores = np.concatenate([good_scores] + ([val_pair[1]] if val_pair else []))
    pixel = _pixel_threshold(good_scored, val_scored, val, keep if val else None, params.get("q", 0.99))
    pixel_note = None
    if pixel is None and current.get("pixel") is not None:
        pixel = float(current["pixel"])
        pixel_note = "no masks and no good images: pixel threshold kept from before"
    block: dict[str, Any] = {
        "image": float(result.value), "method": result.method, "params": result.params,
        "n_good": int(result.n_good), "n_defect": int(result.n_defect), "note": result.note,
        "normalization": fit_normalizer(good_scores, result.value, all_scores).to_dict(),
        "pixel": pixel,
        "calibrated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        # what the drift watch (runtime.drift) compares the line against: good scores + input statistics
        "drift": calibration_block(good_scores, good_scored.stats if good_scored else None),
    }
    if pixel_note:
        block["pixel_note"] = pixel_note
    if precision != "fp32":
        block["precision"] = precision
    Decision.from_thresholds(block, where="new ")  # never write what the runtime would refuse (NaN, inf)
    return block


def _pixel_threshold(good: Scored | None, val: Scored | None, val_spec, keep, q: float) -> float | None:
    """Pixel threshold: F1-max over validation pixels when masks exist, else the ``q`` quantile of the good
    maps' per-image maxima (``pixel_threshold_good``)."""
    masks_paths = val_spec[2] if val_spec else None
    if val is not None and masks_paths is not None:
        masks = read_masks([masks_paths[i] for i in keep], val.maps.shape[1:], val.sizes)
        if masks.any():
            return float(f1_max(masks.ravel().astype(np.int8), val.maps.ravel())[1])
    if good is None:
        return None
    return pixel_threshold_good(good.maps, q)
