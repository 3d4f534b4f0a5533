"""Image folders: a folder, a glob, or a .txt list → sorted image paths; MVTec-AD layout → Split."""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np

from ..errors import InputError
from .split import Split

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm")


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def list_images(source: str | Path) -> list[Path]:
    """Images of a folder (non-recursive, sorted, extensions in ``IMAGE_SUFFIXES`` in any case), a glob pattern
    (sorted; ``**`` recurses), a .txt file of paths (one per line, relative to the file's folder; blank lines
    and ``#`` comments skipped), or one image file. Unreadable files are kept: the run records them as errors."""
    text = str(source)
    path = Path(source)
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if _is_image(p))
    elif path.is_file() and path.suffix.lower() == ".txt":
        lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        found = [(path.parent / ln) if not Path(ln).is_absolute() else Path(ln) for ln in lines]
    elif any(ch in text for ch in "*?["):
        found = sorted(Path(p) for p in glob.glob(text, recursive=True) if _is_image(Path(p)))
    elif path.is_file() and _is_image(path):
        found = [path]
    else:
        raise InputError(f"{source}: no such folder, image, glob or .txt list")
    if not found:
        raise InputError(f"{source}: no images found (looked for {', '.join(IMAGE_SUFFIXES)}); check the path")
    return found


def load_mvtec(root: str | Path) -> Split:
    """MVTec-AD layout: train/good/*, test/<type>/* (good → 0, others → 1), ground_truth/<type>/<stem>_mask.png."""
    root = Path(root)
    if not (root / "train" / "good").is_dir():
        raise InputError(f"{root}: expected MVTec layout with train/good/ (and test/<type>/, ground_truth/<type>/)")
    train = tuple(list_images(root / "train" / "good"))
    test, labels, masks, types = [], [], [], []
    test_root = root / "test"
    for type_dir in sorted(p for p in test_root.iterdir() if p.is_dir()) if test_root.is_dir() else []:
        for image in list_images(type_dir):
            test.append(image)
            labels.append(int(type_dir.name != "good"))
            types.append(type_dir.name)
            mask = root / "ground_truth" / type_dir.name / f"{image.stem}_mask.png"
            masks.append(mask if mask.is_file() else None)
    has_masks = any(m is not None for m in masks)
    return Split(root.name, train, tuple(test), np.asarray(labels, np.int8),
                 tuple(masks) if has_masks else None, tuple(types))
