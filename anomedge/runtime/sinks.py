"""Decision sinks: one record per frame, written whole or not at all (optionally fsynced), so a
crash, SIGKILL or full disk loses at most the record in flight and never leaves a torn line.

Each record is ``os.write`` of its complete bytes to a file opened ``O_APPEND`` (no Python buffer,
so closing never fails later); a failed write is cut back with ``ftruncate`` to the size before the
record and the ``OSError`` raised (the runner turns it into ``SinkError``: the run ends with
the summary and exit 1).

- ``JsonlSink(path, fsync=False, rotate_mb=None)``: one JSON object per line (non-finite numbers as null).
- ``CsvSink(path, ...)``: the columns of ``CSV_COLUMNS``; ``time`` is the timestamp in ISO 8601 (UTC);
  ``ms`` and ``boxes`` as JSON text; the header is written once per file.
- ``ConsoleSink(stream, as_json=False)``: one readable line per record for people (``human_line``),
  or the JSON line with ``as_json``.

With ``rotate_mb`` the file is closed once it reaches that size and renamed ``<stem>.<NNNN><suffix>``
(numbered upwards, never overwritten); the next record starts a fresh file at ``path``. The path is
opened at construction, so an unwritable location fails at start-up (``InputError``).
"""

from __future__ import annotations

import csv
import errno
import io
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any

from datetime import datetime, timezone

from ..errors import AnomedgeError, InputError

CSV_COLUMNS = ("source", "index", "timestamp", "time", "label", "score", "score_normalized", "threshold", "dropped",
               "ms", "boxes", "overlay", "error")


class SinkError(AnomedgeError):
    """A decision record could not be written: the run must end (exit 1), the summary is still printed."""

    exit_code = 1


def _write_whole(fd: int, data: bytes) -> None:
    """Append ``data`` (the rest of a short write is written after it, so the real error shows); on
    failure cut the file back to its size before and raise the OSError."""
    before = os.fstat(fd).st_size
    view = memoryview(data)
    try:
        while view:
            written = os.write(fd, view)
            if written == 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            view = view[written:]
    except OSError:
        try:
            os.ftruncate(fd, before)
        except OSError:
            pass  # a character device (/dev/full) cannot be truncated and holds nothing
        raise


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
            return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as exc:
            raise InputError(f"{self.path}: cannot open for writing ({exc.strerror}); choose a writable {self.option} path") from exc

    @property
    def is_empty(self) -> bool:
        return os.fstat(self._handle).st_size == 0

    def write_text(self, text: str) -> None:
        _write_whole(self._handle, text.encode("utf-8", "surrogateescape"))
        if self.fsync:
            os.fsync(self._handle)
        if self.rotate_bytes and os.fstat(self._handle).st_size >= self.rotate_bytes:
            self.rotate()

    def rotated_files(self) -> list[Path]:
        pattern = re.compile(re.escape(self.path.stem) + r"\.(\d{4,})" + re.escape(self.path.suffix) + "$")
        found = [(int(m.group(1)), p) for p in self.path.parent.iterdir() if (m := pattern.match(p.name))]
        return [p for _, p in sorted(found)]

    def rotate(self) -> Path:
        os.close(self._handle)
        done = self.rotated_files()
        number = int(re.findall(r"\.(\d+)" + re.escape(self.path.suffix) + "$", done[-1].name)[0]) + 1 if done else 1
        target = self.path.with_name(f"{self.path.stem}.{number:04d}{self.path.suffix}")
        os.replace(self.path, target)
        self._handle = self._open()
        return target

    def close(self) -> None:
        if self._handle is not None:
            handle, self._handle = self._handle, None
            try:
                os.close(handle)
            except OSError:
                pass


def _json(record: dict[str, Any]) -> str:
    """Compact JSON; NaN/inf (not JSON) become null."""
    try:
        return json.dumps(record, separators=(",", ":"), allow_nan=False)
    except ValueError:
        return json.dumps(_no_nan(record), separators=(",", ":"))


def _no_nan(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_no_nan(v) for v in value]
    return value


def iso_time(timestamp: Any) -> str:
    """Epoch seconds → ISO 8601 UTC with milliseconds ('' when not a number)."""
    try:
        return datetime.fromtimestamp(float(timestamp), timezone.utc).isoformat(timespec="milliseconds")
    except (TypeError, ValueError, OverflowError, OSError):
        return ""


class JsonlSink:
    def __init__(self, path: str | Path, fsync: bool = False, rotate_mb: float | None = None):
        self._file = _RotatingFile(path, fsync, rotate_mb, "--jsonl")
        self.path = self._file.path

    def write(self, record: dict[str, Any]) -> None:
        self._file.write_text(_json(record) + "\n")

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
    """An existing file with other columns (an older version's) is rotated aside first, never mixed."""

    def __init__(self, path: str | Path, fsync: bool = False, rotate_mb: float | None = None):
        self._file = _RotatingFile(path, fsync, rotate_mb, "--csv")
        self.path = self._file.path
        if not self._file.is_empty:
            with open(self.path, encoding="utf-8", errors="replace") as handle:
                header = handle.readline().rstrip("\r\n")
            if header != ",".join(CSV_COLUMNS):
                self._file.rotate()

    def write(self, record: dict[str, Any]) -> None:
        row = {k: record.get(k, "") for k in CSV_COLUMNS}
        row["time"] = iso_time(record.get("timestamp"))
        for key in ("ms", "boxes"):
            if key in record:
                row[key] = _json(record[key])
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


def human_line(record: dict[str, Any]) -> str:
    """One readable line: ``frame 12  cell_0012.png  NG  score 1.84 (thr 1.20)  18.3 ms  2 boxes``."""
    source = str(record.get("source", ""))
    name = source.rstrip("/").rsplit("/", 1)[-1] or source
    parts = [f"frame {record.get('index', '?')}", name, str(record.get("label", "?"))]
    score, threshold = record.get("score"), record.get("threshold")
    if isinstance(score, (int, float)):
        parts.append(f"score {score:.4g}" + (f" (thr {threshold:.4g})" if isinstance(threshold, (int, float)) else ""))
    ms = record.get("ms")
    if isinstance(ms, dict) and "total" in ms:
        parts.append(f"{ms['total']:.1f} ms")
    if record.get("boxes"):
        parts.append(f"{len(record['boxes'])} box{'es' if len(record['boxes']) != 1 else ''}")
    if record.get("error"):
        parts.append(str(record["error"]))
    if record.get("evidence_error"):
        parts.append(f"evidence not saved: {record['evidence_error']}")
    return printable("  ".join(parts))


def printable(text: str) -> str:
    """``text`` on one line: control characters (a newline in a file name) shown escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class ConsoleSink:
    """Records for people on ``stream`` (default stdout): ``human_line`` or, with ``as_json``, JSON lines."""

    def __init__(self, stream=None, as_json: bool = False):
        self.stream = stream
        self.as_json = as_json

    def write(self, record: dict[str, Any]) -> None:
        stream = self.stream or sys.stdout
        stream.write((_json(record) if self.as_json else human_line(record)) + "\n")
        stream.flush()

    __call__ = write
