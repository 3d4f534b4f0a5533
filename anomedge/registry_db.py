"""The run registry: one SQLite file recording every export, calibration, evaluation and benchmark.

Default path: ``$ANOMEDGE_REGISTRY``, else ``~/.local/share/anomedge/runs.sqlite``. The database is
in WAL mode with a busy timeout, so several processes (a benchmark and a calibration, say) can
record at the same time; every write is one short ``BEGIN IMMEDIATE`` transaction on a fresh
connection (safe across fork/spawn, no connection is shared).

Table ``runs(id, kind, created, artifact, artifact_hash, params, metrics, latency, notes)``:
``kind`` is one of :data:`KINDS`, ``created`` an ISO-8601 UTC timestamp, params/metrics/latency
JSON objects.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from contextlib import closing, contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from anomedge.errors import InputError

__all__ = ["KINDS", "RunRegistry", "default_registry_path", "flatten", "format_table"]

KINDS = ("export", "calibrate", "eval", "bench")
BUSY_TIMEOUT_MS = 30_000

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ({", ".join(repr(k) for k in KINDS)})),
    created TEXT NOT NULL,
    artifact TEXT,
    artifact_hash TEXT,
    params TEXT,
    metrics TEXT,
    latency TEXT,
    notes TEXT
);
CREATE INDEX IF NOT EXISTS runs_kind ON runs (kind, id);
"""
_JSON_COLUMNS = ("params", "metrics", "latency")
_COLUMNS = ("id", "kind", "created", "artifact", "artifact_hash", "params", "metrics", "latency", "notes")


def default_registry_path() -> Path:
    """``$ANOMEDGE_REGISTRY`` if set and non-empty, else ``~/.local/share/anomedge/runs.sqlite``."""
    env = os.environ.get("ANOMEDGE_REGISTRY")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".local" / "share" / "anomedge" / "runs.sqlite"


def _json_default(obj: Any) -> Any:
    """numpy scalars/arrays, paths and sets into JSON-native types (no numpy import needed)."""
    if hasattr(obj, "tolist"):  # numpy scalar or array
        return obj.tolist()
    if isinstance(obj, (Path, os.PathLike)):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _dumps(name: str, value: Mapping[str, Any] | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InputError(f"{name} must be a dict (or None), got {type(value).__name__}")
    try:
        return json.dumps(dict(value), sort_keys=True, default=_json_default)
    except (TypeError, ValueError) as e:
        raise InputError(f"{name} cannot be stored as JSON: {e}") from None


class RunRegistry:
    """A SQLite registry of runs at ``path`` (created with its folders on first use)."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path).expanduser() if path is not None else default_registry_path()
        self._init()

    # ---------------------------------------------------------------- connection

    def _unwritable(self, err: BaseException) -> InputError:
        return InputError(
            f"cannot open the run registry at {self.path} ({err}): "
            "pass a writable path or set ANOMEDGE_REGISTRY to one"
        )

    def _connect(self) -> sqlite3.Connection:
        try:
            con = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            con.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        except sqlite3.Error as e:
            raise self._unwritable(e) from None
        con.row_factory = sqlite3.Row
        return con

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A connection inside one ``BEGIN IMMEDIATE`` transaction, committed on success."""
        with closing(self._connect()) as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    def _init(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise self._unwritable(e) from None
        try:
            with closing(self._connect()) as con:
                # Switching to WAL needs a moment alone with the file; retry if another process is
                # doing the same. The mode is persistent, so later opens skip this.
                for attempt in range(50):
                    try:
                        mode = con.execute("PRAGMA journal_mode").fetchone()[0]
                        if str(mode).lower() != "wal":
                            con.execute("PRAGMA journal_mode = WAL")
                        break
                    except sqlite3.OperationalError as e:
                        if "locked" not in str(e) or attempt == 49:
                            raise
                        time.sleep(0.05)
            with self._write() as con:
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        con.execute(stmt)
        except sqlite3.Error as e:
            raise self._unwritable(e) from None

    # ---------------------------------------------------------------- API

    def record(
        self,
        kind: str,
        artifact: str | os.PathLike | None = None,
        artifact_hash: str | None = None,
        params: Mapping[str, Any] | None = None,
        metrics: Mapping[str, Any] | None = None,
        latency: Mapping[str, Any] | None = None,
        notes: str | None = None,
    ) -> int:
        """Insert one run and return its id. ``kind`` must be one of :data:`KINDS`."""
        if kind not in KINDS:
            raise InputError(f"unknown run kind {kind!r}: expected one of {', '.join(KINDS)}")
        row = (
            kind,
            datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            os.fspath(artifact) if artifact is not None else None,
            artifact_hash,
            _dumps("params", params),
            _dumps("metrics", metrics),
            _dumps("latency", latency),
            notes,
        )
        try:
            with self._write() as con:
                cur = con.execute(
                    "INSERT INTO runs (kind, created, artifact, artifact_hash, params, metrics, latency, notes)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    row,
                )
                return int(cur.lastrowid)
        except sqlite3.Error as e:
            raise self._unwritable(e) from None

    def _select(self, sql: str, args: Sequence[Any]) -> list[dict[str, Any]]:
        try:
            with closing(self._connect()) as con:
                rows = con.execute(sql, args).fetchall()
        except sqlite3.Error as e:
            raise self._unwritable(e) from None
        return [self._row(r) for r in rows]

    @staticmethod
    def _row(r: sqlite3.Row) -> dict[str, Any]:
        d = {k: r[k] for k in _COLUMNS}
        for k in _JSON_COLUMNS:
            d[k] = json.loads(d[k]) if d[k] is not None else {}
        return d

    def list(self, kind: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """The ``limit`` most recent runs (newest first), optionally of one ``kind``."""
        if kind is not None and kind not in KINDS:
            raise InputError(f"unknown run kind {kind!r}: expected one of {', '.join(KINDS)}")
        if int(limit) < 1:
            raise InputError(f"limit must be >= 1, got {limit}")
        where, args = ("WHERE kind = ?", [kind]) if kind is not None else ("", [])
        return self._select(f"SELECT * FROM runs {where} ORDER BY id DESC LIMIT ?", [*args, int(limit)])

    def get(self, run_id: int) -> dict[str, Any]:
        """One run as a dict (JSON columns parsed, missing ones as ``{}``); unknown id → InputError."""
        rows = self._select("SELECT * FROM runs WHERE id = ?", [int(run_id)])
        if not rows:
            raise InputError(f"no run with id {run_id} in {self.path}: list runs to see the ids")
        return rows[0]

    def compare(self, id_a: int, id_b: int) -> list[tuple[str, Any, Any]]:
        """``(key, value_a, value_b)`` over kind, artifact, artifact_hash and the flattened
        ``params.*``, ``metrics.*``, ``latency.*`` keys; differing keys first, each group sorted.
        A key absent from one run has value ``None`` there."""
        a, b = self.get(id_a), self.get(id_b)
        fa, fb = _comparable(a), _comparable(b)
        keys = sorted(set(fa) | set(fb))
        rows = [(k, fa.get(k), fb.get(k)) for k in keys]
        differ = [r for r in rows if not _same(r[1], r[2])]
        same = [r for r in rows if _same(r[1], r[2])]
        return differ + same

    def __len__(self) -> int:
        with closing(self._connect()) as con:
            return int(con.execute("SELECT COUNT(*) FROM runs").fetchone()[0])

    def __repr__(self) -> str:
        return f"RunRegistry({str(self.path)!r})"


def _same(x: Any, y: Any) -> bool:
    if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
        return True
    return bool(x == y)


def _comparable(run: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: run.get(k) for k in ("kind", "artifact", "artifact_hash")}
    for col in _JSON_COLUMNS:
        out.update(flatten(run.get(col) or {}, prefix=col))
    return out


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts → one level with dotted keys (``{"a": {"b": 1}}`` → ``{"a.b": 1}``)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


SUMMARY_COLUMNS = ("id", "kind", "created", "artifact", "data", "detector", "AUROC", "pixel AUROC", "p50 ms")
"""The fixed columns of ``ad-runs list``; a run without a value shows ``-``."""


def _first(run: Mapping[str, Any], *paths: str) -> Any:
    for path in paths:
        value = _lookup(run, path)
        if value is not None and not isinstance(value, Mapping):
            return value
    return None


def _p50(run: Mapping[str, Any]) -> float | None:
    """p50 of an eval/run, or of a bench's first non-reference backend that ran."""
    value = _first(run, "latency.p50_ms", "metrics.p50_ms")
    if value is not None:
        return value
    for name, row in (run.get("latency") or {}).items():
        if not name.startswith("torch") and isinstance(row, Mapping) and isinstance(row.get("p50 ms"), (int, float)):
            return float(row["p50 ms"])
    return None


def summary_row(run: Mapping[str, Any]) -> dict[str, Any]:
    """One ``ad-runs list`` row with :data:`SUMMARY_COLUMNS`: ``created`` to the second (UTC), ``data`` =
    params.data (calibrate: its --val or --good), ``AUROC`` / ``pixel AUROC`` from an eval's metrics."""
    created = str(run.get("created") or "")
    auroc = _first(run, "metrics.image.auroc", "metrics.auroc")
    pixel = _first(run, "metrics.pixel.pixel_auroc", "metrics.pixel_auroc")
    p50 = _p50(run)
    return {"id": run.get("id"), "kind": run.get("kind"), "created": created[:19].replace("T", " "),
            "artifact": run.get("artifact"), "data": _first(run, "params.data", "params.val", "params.good"),
            "detector": _first(run, "params.detector"),
            "AUROC": None if auroc is None else f"{auroc:.4f}",
            "pixel AUROC": None if pixel is None else f"{pixel:.4f}",
            "p50 ms": None if p50 is None else f"{p50:.2f}"}


def _lookup(row: Any, column: str) -> Any:
    """``row[column]``, or a dotted walk into nested dicts (``metrics.auroc``); missing → None."""
    if isinstance(row, Mapping):
        if column in row:
            return row[column]
        cur: Any = row
        for part in column.split("."):
            if not isinstance(cur, Mapping) or part not in cur:
                return None
            cur = cur[part]
        return cur
    return None


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True, separators=(",", ":"))
    return str(v)


def format_table(rows: Sequence[Any], columns: Sequence[str]) -> str:
    """Plain aligned text table: a header, a dashed rule, one line per row.

    ``rows``: dicts (columns looked up by key, dotted keys walk nested dicts) or sequences (taken
    positionally). Numbers are right-aligned, floats to 4 significant digits, ``None`` as ``-``.
    """
    cells: list[list[str]] = []
    numeric = [True] * len(columns)
    for row in rows:
        if isinstance(row, Mapping):
            values = [_lookup(row, c) for c in columns]
        else:
            values = list(row) + [None] * (len(columns) - len(row))
        for j, v in enumerate(values[: len(columns)]):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                numeric[j] = False
        cells.append([_cell(v) for v in values[: len(columns)]])
    widths = [max([len(c)] + [len(r[j]) for r in cells]) for j, c in enumerate(columns)]

    def line(parts: Sequence[str]) -> str:
        out = [p.rjust(w) if num else p.ljust(w) for p, w, num in zip(parts, widths, numeric)]
        return "  ".join(out).rstrip()

    return "\n".join([line(list(columns)), line(["-" * w for w in widths]), *(line(r) for r in cells)])
