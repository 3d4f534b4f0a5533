"""Re-score an archive of saved frames on Ray Data (``ad-rescore``): the records ``ad-run`` writes.

``rescore(archive, artifact, out)`` lists the archive as ``ad-run --source`` does (a folder, glob or
.txt list; the same order, so the same ``index``), skips the files already in ``out`` when resuming,
and maps the rest through actors (``ScoreFrames``: one ``Inspector`` + ``Runner`` per actor, built
once) with ``Dataset.map_batches``. Each actor makes the record of every file with the same code as
``ad-run`` (``Runner.inspect``); the driver writes them as they arrive with the sinks of ``ad-run``,
flushed per record, so a killed job loses only the records in flight and ``--resume`` finishes it.

Outputs by suffix: ``.jsonl`` and ``.csv`` (appended per record; a torn last line from a crash is cut
before appending), ``.parquet`` (records go to ``<out>.partial.jsonl`` as they arrive; at the end the
existing Parquet file and the partial records become one new file, written to a temp file and renamed;
columns those of the CSV sink, ``ms`` / ``boxes`` as JSON text).

``ray.init()`` starts a local cluster unless ``address`` ("auto" or "ray://host:10001") is given.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import BackendUnavailable, InputError

OUTPUT_SUFFIXES = (".jsonl", ".csv", ".parquet")


class ScoreFrames:
    """Ray Data callable class: {"path": (B,), "index": (B,)} → {"record": (B,) JSON text of each record}."""

    def __init__(self, artifact: str, backend: str = "onnxruntime", threshold: float | None = None,
                 threads: int | None = None, options: dict[str, Any] | None = None):
        from ..artifact import Artifact
        from ..runtime.pipeline import Inspector
        from ..runtime.runner import Runner

        self.runner = Runner(Inspector(Artifact.load(artifact), backend, threshold=threshold, threads=threads,
                                       **(options or {})))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from ..runtime.preprocess import read_image
        from ..runtime.sources import Frame

        records = []
        for path, index in zip(batch["path"], batch["index"]):
            stamp = time.time()
            try:
                frame = Frame(str(path), int(index), stamp, image=read_image(path))
            except InputError as exc:
                frame = Frame(str(path), int(index), stamp, error=str(exc))
            records.append(json.dumps(self.runner.inspect(frame)[0]))
        return {"record": np.array(records, dtype=object)}


def _cut_torn_tail(path: Path) -> None:
    """Drop a last line without its newline (a record torn by a crash) so that appending stays valid."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as handle:
        data = handle.read()
        if not data.endswith(b"\n"):
            handle.truncate(data.rfind(b"\n") + 1)


def _jsonl_sources(path: Path) -> set[str]:
    done = set()
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                done.add(json.loads(line)["source"])
            except (ValueError, KeyError, TypeError):
                continue
    return done


def _csv_sources(path: Path) -> set[str]:
    if not path.is_file():
        return set()
    with open(path, encoding="utf-8", newline="") as handle:
        return {row["source"] for row in csv.DictReader(handle) if row.get("source")}


def _parquet_sources(path: Path) -> set[str]:
    done = _jsonl_sources(_partial(path))
    if path.is_file():
        import pyarrow.parquet as pq

        done |= set(pq.read_table(path, columns=["source"]).column("source").to_pylist())
    return done


def _partial(path: Path) -> Path:
    return path.with_name(path.name + ".partial.jsonl")


def _flat(record: dict[str, Any]) -> dict[str, Any]:
    from ..runtime.sinks import CSV_COLUMNS

    row = {k: record.get(k) for k in CSV_COLUMNS}
    for key in ("ms", "boxes"):
        if key in record:
            row[key] = json.dumps(record[key], separators=(",", ":"))
    return row


def finish_parquet(path: Path) -> int:
    """Existing ``path`` + ``<path>.partial.jsonl`` → one Parquet file (temp + rename); returns its rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    partial = _partial(path)
    rows = [json.loads(line) for line in partial.read_text(encoding="utf-8").splitlines() if line.strip()] \
        if partial.is_file() else []
    table = pa.Table.from_pylist([_flat(r) for r in rows]) if rows else None
    if path.is_file():
        old = pq.read_table(path)
        table = old if table is None else pa.concat_tables([old, table], promote_options="permissive")
    if table is None:
        return 0
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    partial.unlink(missing_ok=True)
    return table.num_rows


DONE_READERS: dict[str, Callable[[Path], set[str]]] = {".jsonl": _jsonl_sources, ".csv": _csv_sources,
                                                      ".parquet": _parquet_sources}


def _open_sink(path: Path):
    from ..runtime.sinks import CsvSink, JsonlSink

    if path.suffix == ".csv":
        _cut_torn_tail(path)
        return CsvSink(path)
    target = _partial(path) if path.suffix == ".parquet" else path
    _cut_torn_tail(target)
    return JsonlSink(target)


def rescore(archive: str, artifact: str, out: str | Path, *, address: str | None = None, resume: bool = False,
            batch_size: int = 16, actors: int = 2, backend: str = "onnxruntime", threshold: float | None = None,
            threads: int | None = 1, options: dict[str, Any] | None = None,
            on_record: Callable[[dict[str, Any]], None] | None = None, progress: bool = False):
    """Score every frame of ``archive`` not yet in ``out``; returns the run's ``Summary`` (new records only)."""
    from ..artifact import Artifact
    from ..datasets.folder import list_images
    from ..runtime.runner import Summary

    out = Path(out)
    if out.suffix not in OUTPUT_SUFFIXES:
        raise InputError(f"--out {out}: expected a .jsonl, .csv or .parquet file")
    if batch_size < 1 or actors < 1:
        raise InputError(f"--batch-size {batch_size} / --actors {actors}: expected at least 1")
    if not resume and (out.exists() or _partial(out).exists()):
        raise InputError(f"{out} exists: pass --resume to add only the frames not in it, or choose another --out")
    loaded = Artifact.load(artifact)  # a bad artifact fails here with one line, before any cluster starts
    if threshold is None and loaded.metadata.thresholds.get("image") is None:
        raise InputError(f"{artifact}: no image threshold in metadata; run ad-calibrate or pass --threshold")
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise BackendUnavailable("ad-rescore needs Ray Data: pip install 'ray[data]' (or 'anomedge[ray]')") from exc
    paths = [str(p) for p in list_images(archive)]
    done = DONE_READERS[out.suffix](out) if resume else set()
    todo = [{"path": p, "index": i} for i, p in enumerate(paths) if p not in done]
    summary = Summary()
    sink = _open_sink(out)
    try:
        if todo:
            if not ray.is_initialized():
                ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
                         **({} if address else {"num_cpus": os.cpu_count()}))
            context = ray.data.DataContext.get_current()
            context.enable_progress_bars = progress
            logging.getLogger("ray.data").setLevel(logging.INFO if progress else logging.WARNING)
            dataset = ray.data.from_items(todo).map_batches(
                ScoreFrames, batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=min(actors, len(todo))), num_cpus=1,
                fn_constructor_kwargs={"artifact": str(Path(artifact).resolve()), "backend": backend,
                                       "threshold": threshold, "threads": threads, "options": options})
            for row in dataset.iter_rows():
                record = json.loads(row["record"])
                sink.write(record)
                summary.count(record)
                if on_record is not None:
                    on_record(record)
    finally:
        sink.close()
    if out.suffix == ".parquet":
        finish_parquet(out)
    return summary
