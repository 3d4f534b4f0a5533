"""ad-rescore's input checks run before any Ray cluster starts (no Ray needed): one line, exit 2."""

from __future__ import annotations

from click.testing import CliRunner

from anomedge.cli.rescore import main


def test_bad_outputs_and_artifacts_fail_before_ray(tmp_path):
    (tmp_path / "frames").mkdir()
    taken = tmp_path / "done.jsonl"
    taken.write_text("{}\n")
    cases = [
        (["--artifact", str(tmp_path), "--out", str(tmp_path / "out.txt")], "expected a .jsonl, .csv or .parquet"),
        (["--artifact", str(tmp_path), "--out", str(taken)], "pass --resume"),
        (["--artifact", str(tmp_path / "none"), "--out", str(tmp_path / "new.jsonl")], "no metadata.json"),
        (["--artifact", str(tmp_path), "--out", str(tmp_path / "new.csv"), "--actors", "0"], "--actors 0"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(main, [str(tmp_path / "frames"), *args])
        assert result.exit_code == 2, result.output
        assert message in result.output and result.output.count("\n") == 1
