"""``update_artifact``: a NEW artifact folder = an artifact + new good images, without a refit (workstation).

Order (each step can refuse with one line; nothing is written until the features are in):

1. ``Artifact.load`` — every hash and check first (a tampered artifact is refused before anything else);
   the detector must have an Updater (``updaters.UPDATERS``); the output folder must not exist.
2. The new good images are split (seeded, ``--holdout``) into images added to the model and images held
   out to re-calibrate the threshold (none with ``--keep-threshold``). Images that cannot be read are
   skipped with a warning and counted; none usable is an InputError.
3. Features: the graph rebuilt from the artifact's ``model`` block (``build_graph``, no pickle) on the
   artifact's own preprocessing (``runtime.preprocess``), batch by batch, fed to the Updater.
4. The new folder is built in a temp dir next to the output: the input's files copied, the Updater's
   arrays written, metadata merged (``model.version`` + 1, a ``model.history`` entry: time, images added,
   the previous artifact's sha256), then what depends on the state rebuilt: ``knn.onnx``, the graph
   placement, golden frames (PyTorch reference on the new images), the threshold (``calibrate``), and it
   is loaded and verified; only then renamed to the output (atomic on one filesystem). The input is never
   modified. Its signature does not carry over (the contract changed): ``sign_key`` signs the new one.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..artifact import METADATA, SIGNATURE, Artifact, read_metadata_bytes, sha256_file, write_metadata
from ..artifact.schema import parse_json
from ..errors import InputError
from ..runtime.imageio import DEFAULT_MAX_PIXELS, read_image
from ..runtime.preprocess import preprocess
from .updaters import Update, updater_for

HISTORY_LIMIT = 50


@dataclass
class UpdateReport:
    artifact: Artifact  # the new one
    source: Path
    detector: str
    version: int
    n_added: int
    n_holdout: int
    skipped: list[tuple[str, str]]
    summary: dict[str, Any]
    threshold_before: float | None
    threshold_after: float | None
    seconds: float
    was_signed: bool
    signed: bool
    notes: list[str] = field(default_factory=list)


def default_out(src: Path, version: int) -> Path:
    """``<artifact>-v<version>`` next to the input."""
    return src.parent / f"{src.name}-v{version}"


def read_frames(paths: Sequence[Path], max_pixels: int) -> tuple[list[np.ndarray], list[Path], list[tuple[str, str]]]:
    """Decode ``paths``; those that cannot be read are returned as (path, reason) with a warning each."""
    frames, kept, skipped = [], [], []
    for path in paths:
        try:
            frames.append(read_image(path, max_pixels))
        except InputError as exc:
            skipped.append((str(path), str(exc)))
            warnings.warn(f"skipped {exc}")
            continue
        kept.append(Path(path))
    return frames, kept, skipped


def feed(updater, graph, paths: Sequence[Path], spec, batch_size: int, max_pixels: int,
         progress: bool | None) -> tuple[list[Path], list[tuple[str, str]]]:
    """Run the new images through ``graph`` in batches (progress bar over images) into ``updater``."""
    import torch

    from ..progress import progress as counter

    used, skipped = [], []
    with counter(len(paths), "new good images", progress) as bar, torch.inference_mode():
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            frames, kept, bad = read_frames(chunk, max_pixels)
            good_frames, good_paths = [], []
            for frame, path in zip(frames, kept):
                try:
                    good_frames.append(preprocess([frame], spec)[0])
                    good_paths.append(path)
                except InputError as exc:  # e.g. a dtype or shape the runtime refuses
                    bad.append((str(path), str(exc)))
                    warnings.warn(f"skipped {path}: {exc}")
            if good_frames:
                out = graph(torch.from_numpy(np.stack(good_frames)))
                out = out[0] if isinstance(out, (tuple, list)) else out
                updater.add(out.float().numpy())
            used += good_paths
            skipped += bad
            bar.update(len(chunk))
    return used, skipped


def update_artifact(src: str | os.PathLike, good: Sequence[Path], out: str | os.PathLike | None = None,
                    holdout: float = 0.1, keep_threshold: bool = False, quantile: float = 0.99,
                    max_bank_rows: int | None = None, sign_key: str | os.PathLike | None = None,
                    batch_size: int = 16, max_pixels: int = DEFAULT_MAX_PIXELS, seed: int = 0,
                    progress: bool | None = None) -> UpdateReport:
    """Write a new artifact folder (``out``, default ``<src>-v<N>``) = ``src`` updated with ``good`` images."""
    from ..export.fit import split_holdout
    from ..models.detector import get_detector

    start_time = time.perf_counter()
    src = Path(src)
    artifact = Artifact.load(src)  # every hash first
    updater = updater_for(artifact)
    updater.check_limit(max_bank_rows)
    version = int(artifact.metadata.model.get("version", 1)) + 1
    out = Path(out) if out is not None else default_out(src, version)
    if out.resolve() == src.resolve():
        raise InputError(f"--out {out}: that is the input artifact; ad-update never modifies it, choose a new folder")
    if out.exists() or out.is_symlink():
        raise InputError(f"--out {out}: already exists; choose a new folder (ad-update writes a new artifact)")
    if not out.parent.is_dir():
        raise InputError(f"--out {out}: its folder {out.parent} does not exist")
    if sign_key is not None:
        from ..artifact.signing import check_private_key

        check_private_key(sign_key)
    paths = list(good)
    if not paths:
        raise InputError("no new good images given: pass --good with a folder, glob or list of good images")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise InputError(f"--batch-size {batch_size!r}: expected a positive integer")
    if not 0 < quantile < 1:
        raise InputError(f"--quantile {quantile}: expected a value in (0, 1)")
    notes: list[str] = []
    if keep_threshold:
        fit_paths, hold_paths = paths, []
    else:
        fit_paths, hold_paths = split_holdout(paths, holdout, seed)
        if not hold_paths:
            notes.append(f"{len(paths)} new images: too few to hold {holdout:.0%} out for a new threshold; "
                         "the threshold in force is kept (recalibrate with ad-calibrate)")
    meta = artifact.metadata
    graph = get_detector(meta.detector).build_graph(meta.model, artifact).eval()
    used, skipped = feed(updater, graph, fit_paths, meta.input, batch_size, max_pixels, progress)
    if not used:
        first = skipped[0][1] if skipped else "no images"
        raise InputError(f"none of the {len(fit_paths)} new good images could be used (first: {first}); "
                         "check the --good folder")
    update = updater.finish(max_bank_rows)
    notes += update.notes
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        entry = {"version": version, "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 "n_images_added": len(used), "n_skipped": len(skipped), "n_holdout": len(hold_paths),
                 "previous_sha256": artifact.sha256, "previous_version": version - 1, **update.summary}
        notes += _write_folder(artifact, tmp, update, version, entry)
        _rebuild_derived(tmp, used)
        threshold_after = meta.thresholds.get("image")
        if hold_paths:
            from ..calibrate.apply import calibrate

            block = calibrate(tmp, hold_paths, "quantile", max_pixels=max_pixels, q=quantile)
            threshold_after = block["image"]
        if sign_key is not None:
            from ..artifact.signing import sign

            sign(tmp, sign_key)
        Artifact.load(tmp)  # the whole new folder verifies before it gets its name
        os.chmod(tmp, 0o755)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return UpdateReport(Artifact.load(out), src, meta.detector, version, len(used), len(hold_paths), skipped,
                        update.summary, meta.thresholds.get("image"), threshold_after,
                        time.perf_counter() - start_time, (src / SIGNATURE).exists(), sign_key is not None, notes)


def _write_folder(artifact: Artifact, dst: Path, update: Update, version: int, entry: dict[str, Any]) -> list[str]:
    """Copy ``artifact``'s files into ``dst``, write the update's arrays, merge and write metadata.json."""
    raw = copy.deepcopy(parse_json(read_metadata_bytes(artifact.root), str(artifact.root / METADATA)))
    notes = []
    engine = raw["model"].get("engine")
    if engine and engine.get("onnx") == raw["scoring"].get("graph_model"):
        # a plan built from the graph placement embeds the old bank / statistics: it cannot be kept
        raw["files"].pop(engine["file"], None)
        del raw["model"]["engine"]
        notes.append(f"dropped {engine['file']} (built from the graph placement, which embeds the old state); "
                     "rebuild it on the GPU machine with ad-export's engine format")
    _drop_derived(raw)
    for name in raw["files"]:
        if name not in update.arrays:
            shutil.copyfile(artifact.root / name, dst / name)
    for name, array in update.arrays.items():
        np.save(dst / name, np.ascontiguousarray(array), allow_pickle=False)
        raw["files"][name] = ""
    raw["model"].setdefault("fit", {}).update(update.fit)
    raw["model"].update(update.model)
    raw["scoring"].update(update.scoring)
    raw["model"]["version"] = version
    raw["model"]["history"] = ([*raw["model"].get("history", []), entry])[-HISTORY_LIMIT:]
    raw["files"] = {name: sha256_file(dst / name) for name in raw["files"]}
    for name in os.listdir(dst):
        os.chmod(dst / name, 0o644)
    write_metadata(dst, raw)
    return notes


def _drop_derived(raw: dict[str, Any]) -> None:
    """Unlist the files that embed the fitted state (rebuilt by ``_rebuild_derived``); what to rebuild is
    kept in ``raw["model"]["rebuild"]`` until then."""
    from ..runtime.verify import GOLDEN_FILES
    from ..scoring.heads import KNN_GRAPH

    scoring, model, files = raw["scoring"], raw["model"], raw["files"]
    rebuild = {"knn": files.pop(KNN_GRAPH, None) is not None, "placement": scoring.get("placement", "host")}
    for key in ("graph_model", "graph_head"):
        if key in scoring:
            files.pop(scoring.pop(key), None)
            rebuild[key] = True
    scoring["placement"] = "host"
    model.pop("golden", None)
    for name in GOLDEN_FILES.values():
        files.pop(name, None)
    model["rebuild"] = rebuild


def _rebuild_derived(root: Path, images: Sequence[Path]) -> None:
    """Rebuild what embeds the fitted state: knn.onnx, the graph placement, the golden frames."""
    from ..export.writer import add_graph_placement, add_knn_graph, write_golden

    with Artifact.edit(root) as edit:
        rebuild = edit.meta["model"].pop("rebuild")
    if rebuild["knn"]:
        add_knn_graph(root)
    if rebuild.get("graph_model"):
        add_graph_placement(root, merged=True)
    if rebuild.get("graph_head"):
        add_graph_placement(root, merged=False)
    if rebuild["placement"] != "host":
        with Artifact.edit(root) as edit:
            edit.meta["scoring"]["placement"] = rebuild["placement"]
    write_golden(root, list(images))
