"""Decision sinks. ``JsonlSink``: one JSON object per line, appended and flushed per record (optionally
fsynced), so a crash loses at most the record in flight."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import InputError


class JsonlSink:
    def __init__(self, path: str | Path, fsync: bool = False):
        self.path = Path(path)
        self.fsync = fsync
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = open(self.path, "a", encoding="utf-8")
        except OSError as exc:
            raise InputError(f"{self.path}: cannot open for writing ({exc.strerror}); choose a writable --jsonl path") from exc

    def write(self, record: dict[str, Any]) -> None:
        self._handle.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._handle.flush()
        if self.fsync:
            os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> "JsonlSink":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
