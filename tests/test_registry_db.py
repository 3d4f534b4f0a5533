"""anomedge.registry_db: SQLite run registry, concurrent writers, table formatting."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from anomedge.errors import InputError
from anomedge.registry_db import RunRegistry, default_registry_path, flatten, format_table


def test_round_trip(tmp_path):
    reg = RunRegistry(tmp_path / "sub" / "runs.sqlite")
    rid = reg.record(
        "eval",
        artifact=tmp_path / "art",
        artifact_hash="ab12",
        params={"detector": "padim", "backbone": {"name": "lite0", "layers": [2, 4]}},
        metrics={"auroc": np.float64(0.944), "n": np.int64(12)},
        latency={"p50_ms": 3.5},
        notes="first",
    )
    run = reg.get(rid)
    assert run["id"] == rid and run["kind"] == "eval" and run["notes"] == "first"
    assert run["artifact"] == str(tmp_path / "art") and run["artifact_hash"] == "ab12"
    assert run["params"] == {"detector": "padim", "backbone": {"name": "lite0", "layers": [2, 4]}}
    assert run["metrics"] == {"auroc": 0.944, "n": 12} and run["latency"] == {"p50_ms": 3.5}
    assert run["created"].endswith("+00:00")
    bare = reg.get(reg.record("bench"))
    assert bare["params"] == {} and bare["artifact"] is None
    with sqlite3.connect(reg.path) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_list_filters_and_orders_newest_first(tmp_path):
    reg = RunRegistry(tmp_path / "runs.sqlite")
    ids = [reg.record(kind) for kind in ["export", "eval", "eval", "bench", "eval"]]
    assert [r["id"] for r in reg.list()] == ids[::-1]
    assert [r["id"] for r in reg.list(kind="eval")] == [ids[4], ids[2], ids[1]]
    assert [r["id"] for r in reg.list(kind="eval", limit=2)] == [ids[4], ids[2]]
    assert len(reg) == 5
    with pytest.raises(InputError, match="unknown run kind 'train'"):
        reg.list(kind="train")
    with pytest.raises(InputError, match="export, calibrate, eval, bench"):
        reg.record("train")


def test_get_unknown_id(tmp_path):
    reg = RunRegistry(tmp_path / "runs.sqlite")
    with pytest.raises(InputError, match="no run with id 42"):
        reg.get(42)


def test_compare_puts_differences_first(tmp_path):
    reg = RunRegistry(tmp_path / "runs.sqlite")
    a = reg.record("eval", artifact="A", params={"k": 1, "same": "x"}, metrics={"auroc": 0.9}, latency={"p50": 2.0})
    b = reg.record("eval", artifact="A", params={"k": 3, "same": "x"}, metrics={"auroc": 0.9, "f1": 0.5})
    rows = reg.compare(a, b)
    assert rows[:4] == [("latency.p50", 2.0, None), ("metrics.f1", None, 0.5), ("params.k", 1, 3)] + [rows[3]]
    differing = {k for k, x, y in rows if x != y}
    assert differing == {"latency.p50", "metrics.f1", "params.k"}
    assert [k for k, _, _ in rows[3:]] == ["artifact", "artifact_hash", "kind", "metrics.auroc", "params.same"]


def _writer(path: str, tag: int, n: int, barrier) -> None:
    reg = RunRegistry(path)
    barrier.wait(timeout=60)  # both processes start writing at the same moment
    for i in range(n):
        reg.record("bench", params={"writer": tag, "i": i}, metrics={"v": i * 0.5})
        time.sleep(0.001)  # other work between records, as in a real run


def test_two_processes_write_concurrently(tmp_path):
    path = str(tmp_path / "runs.sqlite")  # created by the writers themselves, concurrently
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_writer, args=(path, tag, 200, barrier)) for tag in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    with sqlite3.connect(path) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert con.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 400
        per_writer = con.execute(
            "SELECT json_extract(params, '$.writer'), COUNT(DISTINCT json_extract(params, '$.i')) FROM runs GROUP BY 1"
        ).fetchall()
        writers = [w for (w,) in con.execute("SELECT json_extract(params, '$.writer') FROM runs ORDER BY id")]
    assert sorted(per_writer) == [(0, 200), (1, 200)]
    # the writes really interleaved (they did not simply run one after the other)
    assert sum(a != b for a, b in zip(writers, writers[1:])) >= 10


def test_unwritable_path_names_it(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    bad = blocker / "runs.sqlite"
    with pytest.raises(InputError, match=str(bad).replace("\\", "\\\\")):
        RunRegistry(bad)
    with pytest.raises(InputError, match="ANOMEDGE_REGISTRY"):
        RunRegistry(tmp_path)  # a folder, not a database file


def test_default_path_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("ANOMEDGE_REGISTRY", str(tmp_path / "env.sqlite"))
    assert default_registry_path() == tmp_path / "env.sqlite"
    assert RunRegistry().path == tmp_path / "env.sqlite"
    monkeypatch.delenv("ANOMEDGE_REGISTRY")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_registry_path() == Path(tmp_path) / ".local" / "share" / "anomedge" / "runs.sqlite"


def test_non_json_params_rejected(tmp_path):
    reg = RunRegistry(tmp_path / "runs.sqlite")
    with pytest.raises(InputError, match="params cannot be stored as JSON"):
        reg.record("eval", params={"f": object()})
    with pytest.raises(InputError, match="metrics must be a dict"):
        reg.record("eval", metrics=[1, 2])
    assert len(reg) == 0


def test_flatten_and_format_table():
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": {}}) == {"a.b": 1, "a.c.d": 2, "e": {}}
    rows = [
        {"id": 1, "kind": "eval", "metrics": {"auroc": 0.94412345}},
        {"id": 12, "kind": "bench", "metrics": {}},
    ]
    text = format_table(rows, ["id", "kind", "metrics.auroc"])
    assert text.splitlines() == [
        "id  kind   metrics.auroc",
        "--  -----  -------------",
        " 1  eval          0.9441",
        "12  bench              -",
    ]
    assert format_table([("x", 1.5)], ["name", "value"]).splitlines()[-1] == "x       1.5"


def test_summary_rows_have_fixed_columns_from_each_kind(tmp_path):
    from anomedge.registry_db import SUMMARY_COLUMNS, summary_row

    reg = RunRegistry(tmp_path / "r.sqlite")
    reg.record("eval", artifact="a", params={"data": "synthetic:brick", "detector": "padim"},
               metrics={"image": {"auroc": 0.99251}, "pixel": {"pixel_auroc": 0.9937}})
    reg.record("bench", artifact="a", params={"data": "d", "detector": "padim"},
               latency={"torch:fp32": {"p50 ms": 36.2}, "onnxruntime:fp32": {"p50 ms": 16.136}})
    reg.record("calibrate", artifact="a", params={"val": "v", "good": None})
    calib, bench, ev = (summary_row(r) for r in reg.list())
    assert all(tuple(r) == SUMMARY_COLUMNS for r in (calib, bench, ev))
    assert (ev["data"], ev["detector"], ev["AUROC"], ev["pixel AUROC"], ev["p50 ms"]) == \
        ("synthetic:brick", "padim", "0.9925", "0.9937", None)
    assert bench["p50 ms"] == "16.14" and bench["AUROC"] is None  # the first backend that is not the reference
    assert calib["data"] == "v" and len(calib["created"]) == 19
