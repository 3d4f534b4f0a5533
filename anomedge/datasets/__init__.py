"""Data sets as file paths: ``load_dataset(spec) -> Split``.

Specs: ``elpv:mono`` | ``elpv:poly`` (``elpv`` = mono); ``digits`` | ``digits:<0-9>`` (the anomaly digit,
default 7); ``synthetic:<texture>`` (brick, grass, gravel, elpv; ``synthetic`` = brick); or a folder: MVTec
layout (``train/good``, ``test/<type>``, ``ground_truth/<type>``) or a plain folder of good images (train
only, empty test). A path that exists wins over a data set name. Generated sets (digits, synthetic) are
written once under ``cache_dir`` (default ``$ANOMEDGE_CACHE``, else ``~/.cache/anomedge/datasets``), in a
subfolder named by their parameters, and reused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import InputError
from .cache import default_cache_dir
from .split import Split

__all__ = ["DATASETS", "FORMS", "Split", "load_dataset"]


def _elpv(arg: str | None, cache_dir: Path) -> Split:
    from .elpv import load_elpv

    return load_elpv(arg or "mono")


def _digits(arg: str | None, cache_dir: Path) -> Split:
    from .digits import make_digits

    if arg is not None and not (len(arg) == 1 and arg.isdigit()):
        raise InputError(f"data 'digits:{arg}': expected digits:<0-9> (the anomaly digit)")
    digit = int(arg) if arg else 7
    return make_digits(cache_dir / f"digits-{digit}-s32-seed0", anomaly_digit=digit)


def _synthetic(arg: str | None, cache_dir: Path) -> Split:
    from .synthetic import make_synthetic

    texture = arg or "brick"
    return make_synthetic(cache_dir / f"synthetic-{texture}-s256-n40-20-40-seed0", texture=texture)


# name → factory(argument after ':' or None, cache dir) → Split
DATASETS: dict[str, Callable[[str | None, Path], Split]] = {
    "elpv": _elpv,
    "digits": _digits,
    "synthetic": _synthetic,
}
FORMS = ("elpv:mono", "elpv:poly", "digits[:<0-9>]", "synthetic:<brick|grass|gravel|elpv>",
         "a folder in MVTec layout (train/good, test/<type>)", "a folder of good images")


def _folder(path: Path) -> Split:
    from .folder import list_images, load_mvtec

    if (path / "train" / "good").is_dir():
        return load_mvtec(path)
    return Split(path.name, tuple(list_images(path)), (), np.zeros(0, np.int8))


def load_dataset(spec: str | Path, cache_dir: Path | None = None) -> Split:
    """Resolve ``spec`` (see the module docstring) to a Split of image paths."""
    text = str(spec)
    name, sep, arg = text.partition(":")
    path = Path(text).expanduser()
    if name in DATASETS and not path.exists():
        try:
            return DATASETS[name](arg if sep else None, Path(cache_dir) if cache_dir else default_cache_dir())
        except ModuleNotFoundError as exc:  # generators need scikit-learn / scikit-image (the export extra)
            raise InputError(f"data set '{text}' needs the module '{exc.name}': pip install 'anomedge[export]'") from exc
    if path.is_dir():
        return _folder(path)
    raise InputError(f"data '{spec}': no such data set or folder; expected one of: {'; '.join(FORMS)}")
