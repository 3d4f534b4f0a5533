"""Decision sinks: one record per frame, appended and flushed per record (optionally fsynced), so a
crash or SIGKILL loses at most the record in flight.

- ``JsonlSink(path, fsync=False, rotate_mb=None)``: one JSON object per line.
- ``CsvSink(path, ...)``: the columns of ``CSV_COLUMNS``: ``time`` is the timestamp as ISO 8601 UTC
  (``timestamp`` stays epoch seconds), one ``<stage>_ms`` column per stage (``total_ms``, ``preprocess_ms``,
  …), ``boxes`` as JSON text; the header is written once per file.

With ``rotate_mb`` the file is closed once it reaches that size and renamed ``<stem>.<NNNN><suffix>``
(numbered upwards, never overwritten); the next record starts a fresh file at ``path``. The path is
opened at construction, so an unwritable location fails at start-up (``InputError``).
"""

from __future__ import annotations

import csv
from datetime import datetime, timezone
import io
import json
import os
import re
from pathlib import Path
from typing import Any

from ..errors import InputError

CSV_MS = ("total", "preprocess", "infer", "score", "postprocess")
CSV_COLUMNS = ("source", "index", "time", "timestamp", "label", "score", "score_normalized", "threshold", "dropped",
               *(f"{stage}_ms" for stage in CSV_MS), "boxes", "overlay", "error")


class _RotatingFile:
    def __init__(self, path: str | Path, fsync: bool, rotate_mb: float | None, option: str):
        self.path = Path(path)
        self.fsync = fsync
        self.rotate_bytes = int(rotate_mb * 1e6) if rotate_mb else None
        self.option = option
        self._handle = self._open()

    def _open(self):
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return open(self.path, "a", encoding="utf-8", newline="")
        except OSError as exc:
            raise InputError(f"{self.path}: cannot open for writing ({exc.strerror}); choose a writable {self.option} path") from exc

    @property
    def is_empty(self) -> bool:
        return self._handle.tell() == 0

    def write_text(self, text: str) -> None:
        self._handle.write(text)
        self._handle.flush()
        if self.fsync:
            os.fsync(self._handle.fileno())
        if self.rotate_bytes and self._handle.tell() >= self.rotate_bytes:
            self.rotate()

    def rotated_files(self) -> list[Path]:
        pattern = re.compile(re.escape(self.path.stem) + r"\.(\d{4,})" + re.escape(self.path.suffix) + "$")
        found = [(int(m.group(1)), p) for p in self.path.parent.iterdir() if (m := pattern.match(p.name))]
        return [p for _, p in sorted(found)]

    def rotate(self) -> Path:
        self._handle.close()
        done = self.rotated_files()
        number = int(re.findall(r"\.(\d+)" + re.escape(self.path.suffix) + "$", done[-1].name)[0]) + 1 if done else 1
        target = self.path.with_name(f"{self.path.stem}.{number:04d}{self.path.suffix}")
        os.replace(self.path, target)
        self._handle = self._open()
        return target

    def close(self) -> None:
        self._handle.close()


class JsonlSink:
    def __init__(self, path: str | Path, fsync: bool = False, rotate_mb: float | None = None):
        self._file = _RotatingFile(path, fsync, rotate_mb, "--jsonl")
        self.path = self._file.path

    def write(self, record: dict[str, Any]) -> None:
        self._file.write_text(json.dumps(record, separators=(",", ":")) + "\n")

    __call__ = write

    def rotated_files(self) -> list[Path]:
        return self._file.rotated_files()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "JsonlSink":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CsvSink:
    def __init__(self, path: str | Path, fsync: bool = False, rotate_mb: float | None = None):
        self._file = _RotatingFile(path, fsync, rotate_mb, "--csv")
        self.path = self._file.path

    def write(self, record: dict[str, Any]) -> None:
        row = {k: record.get(k, "") for k in CSV_COLUMNS}
        for stage, value in (record.get("ms") or {}).items():
            if f"{stage}_ms" in row:
                row[f"{stage}_ms"] = value
        if isinstance(record.get("timestamp"), (int, float)):
            row["time"] = datetime.fromtimestamp(record["timestamp"], timezone.utc).isoformat(timespec="milliseconds")
        if "boxes" in record:
            row["boxes"] = json.dumps(record["boxes"], separators=(",", ":"))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
        if self._file.is_empty:
            writer.writeheader()
        writer.writerow(row)
        self._file.write_text(buffer.getvalue())

    __call__ = write

    def rotated_files(self) -> list[Path]:
        return self._file.rotated_files()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "CsvSink":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
