"""Data sets as file paths. ``load_dataset(spec)``: "elpv:mono", "elpv:poly", or a folder (MVTec layout,
or a plain folder of good images)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..errors import InputError
from .split import Split

# name → factory(argument or None) → Split; generated sets take their cache dir from the environment.
DATASETS: dict[str, Callable[[str | None], Split]] = {}


def _elpv(arg: str | None) -> Split:
    from .elpv import load_elpv

    return load_elpv(arg or "mono")


DATASETS["elpv"] = _elpv


def load_dataset(spec: str) -> Split:
    name, _, arg = str(spec).partition(":")
    if name in DATASETS and not Path(spec).exists():
        return DATASETS[name](arg or None)
    path = Path(spec)
    if path.is_dir():
        from .folder import list_images, load_mvtec

        if (path / "train" / "good").is_dir():
            return load_mvtec(path)
        import numpy as np

        return Split(path.name, tuple(list_images(path)), (), np.zeros(0, np.int8))
    raise InputError(f"data '{spec}': expected {', '.join(n + ':…' for n in DATASETS)} or a folder of images")
