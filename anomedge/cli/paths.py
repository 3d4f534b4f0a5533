"""Resolve a CLI image argument: a data set spec (its good training images) or a folder/glob/list."""

from __future__ import annotations

from pathlib import Path


def good_images(spec: str) -> list[Path]:
    from ..datasets import DATASETS, load_dataset
    from ..datasets.folder import list_images

    name = spec.partition(":")[0]
    if name in DATASETS and not Path(spec).exists():
        return list(load_dataset(spec).train)
    if (Path(spec) / "train" / "good").is_dir():
        return list(load_dataset(spec).train)
    return list_images(spec)
