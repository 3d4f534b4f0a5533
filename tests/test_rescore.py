"""ad-rescore on a real local Ray cluster (2 CPUs): the records of ad-run for the same files (scores
rtol 1e-6 — the same runtime code, one frame at a time — identical labels, indices and NG boxes),
resumable after an interrupted run (a torn last line included), JSONL / CSV / Parquet outputs."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow
pytest.importorskip("ray.data", reason="Ray Data is not installed: pip install 'anomedge[ray]'")


@pytest.fixture(scope="module")
def archive(elpv_paths, tmp_path_factory):
    folder = tmp_path_factory.mktemp("archive")
    for path in elpv_paths[20:30]:
        shutil.copy(path, folder)
    (folder / "broken.png").write_bytes(b"not a png")  # one bad file: an ERROR record, the job goes on
    return folder


@pytest.fixture(scope="module")
def cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def ad_run_records(tiny_artifact, archive, tmp_path_factory):
    from click.testing import CliRunner

    from anomedge.cli.run import main

    out = tmp_path_factory.mktemp("adrun") / "records.jsonl"
    result = CliRunner().invoke(main, [str(tiny_artifact.root), "--source", str(archive), "--jsonl", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    return {r["source"]: r for r in map(json.loads, out.read_text().splitlines())}


def _same(records, expected):
    assert records.keys() == expected.keys()
    for source, want in expected.items():
        got = records[source]
        assert (got["label"], got["index"], got.get("boxes"), got.get("threshold")) == \
            (want["label"], want["index"], want.get("boxes"), want.get("threshold"))
        if want["label"] != "ERROR":
            np.testing.assert_allclose(got["score"], want["score"], rtol=1e-6)


def test_rescore_matches_ad_run_and_resumes(cluster, tiny_artifact, archive, ad_run_records, tmp_path):
    from anomedge.errors import InputError
    from anomedge.serving.rescore import rescore

    assert {r["label"] for r in ad_run_records.values()} == {"OK", "NG", "ERROR"}
    out = tmp_path / "records.jsonl"
    # An interrupted earlier run: three complete records and one torn line.
    first = list(ad_run_records.values())[:3]
    out.write_text("".join(json.dumps(r) + "\n" for r in first) + '{"source": "torn')
    summary = rescore(str(archive), str(tiny_artifact.root), out, resume=True, actors=2, batch_size=3)
    assert summary.frames == len(ad_run_records) - 3
    lines = out.read_text().splitlines()
    assert len(lines) == len(ad_run_records)  # the torn line was cut, nothing duplicated
    _same({r["source"]: r for r in map(json.loads, lines)}, ad_run_records)
    assert rescore(str(archive), str(tiny_artifact.root), out, resume=True).frames == 0
    with pytest.raises(InputError, match="--resume"):
        rescore(str(archive), str(tiny_artifact.root), out)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_csv_and_parquet_outputs(cluster, tiny_artifact, archive, ad_run_records, tmp_path, suffix):
    from anomedge.serving.rescore import rescore

    out = tmp_path / f"records{suffix}"
    rescore(str(archive), str(tiny_artifact.root), out, actors=1, batch_size=4)
    if suffix == ".csv":
        with open(out, newline="") as handle:
            rows = list(csv.DictReader(handle))
    else:
        import pyarrow.parquet as pq

        rows = pq.read_table(out).to_pylist()
        assert not Path(f"{out}.partial.jsonl").exists()
    assert len(rows) == len(ad_run_records)
    for row in rows:
        want = ad_run_records[row["source"]]
        assert row["label"] == want["label"] and int(row["index"]) == want["index"]
        if want["label"] != "ERROR":
            np.testing.assert_allclose(float(row["score"]), want["score"], rtol=1e-6)
            assert (json.loads(row["boxes"]) if row["boxes"] else None) == want.get("boxes")
