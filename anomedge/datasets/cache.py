"""Generated data sets on disk: the default cache folder, a PNG writer, and build-once folders.

A generated folder is complete when its marker file (``.anomedge-dataset.json``: the generator's parameters
and the list of files) exists; the marker is written last, so an interrupted build is never reused.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from ..errors import InputError

MARKER = ".anomedge-dataset.json"


def default_cache_dir() -> Path:
    """``$ANOMEDGE_CACHE`` if set, else ``~/.cache/anomedge/datasets``."""
    env = os.environ.get("ANOMEDGE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "anomedge" / "datasets"


def write_png(path: Path, image: np.ndarray) -> None:
    """Write a (H, W) or (H, W, 3) uint8 image as PNG with fixed settings (same bytes on every run)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if image.dtype != np.uint8 or not cv2.imwrite(str(path), image, [cv2.IMWRITE_PNG_COMPRESSION, 3]):
        raise InputError(f"{path}: could not write a {image.dtype} {image.shape} PNG; check the folder is writable")


def _complete(out_dir: Path, params: dict) -> bool:
    marker = out_dir / MARKER
    if not marker.is_file():
        return False
    found = json.loads(marker.read_text())
    if found.get("params") != params:
        raise InputError(f"{out_dir}: holds a data set generated with {found.get('params')}, not {params}; "
                         "delete the folder or choose another one")
    return all((out_dir / name).is_file() for name in found.get("files", ()))


def _mark(folder: Path, params: dict) -> None:
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != MARKER)
    (folder / MARKER).write_text(json.dumps({"params": params, "files": files}, indent=1) + "\n")


def build_once(out_dir: str | Path, params: dict, write: Callable[[Path], None]) -> Path:
    """Return ``out_dir`` holding the data set described by ``params`` (JSON-able), calling ``write(folder)``
    only when no complete copy is there. A new set is written to a temporary sibling and renamed into place;
    a folder with the same parameters but missing files is rewritten in place. A non-empty folder that is
    not a generated set, or one made with other parameters, is refused (nothing is ever deleted)."""
    out_dir = Path(out_dir).expanduser()
    if _complete(out_dir, params):
        return out_dir
    if (out_dir / MARKER).is_file():  # ours, same parameters, some files gone: rewrite in place
        (out_dir / MARKER).unlink()
        write(out_dir)
        _mark(out_dir, params)
        return out_dir
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InputError(f"{out_dir}: exists and is not a generated data set (no {MARKER}); "
                         "choose a new or empty folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write(tmp)
        _mark(tmp, params)
        if out_dir.is_dir():
            out_dir.rmdir()
        os.replace(tmp, out_dir)
    except OSError:
        if not _complete(out_dir, params):  # not a concurrent build that finished first
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
