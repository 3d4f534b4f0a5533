"""benchmarks/gpu_check.sh, checked without a GPU: its syntax, and every command its ``--dry-run``
prints parsed by the real CLI it calls (click commands, the TensorRT builder's argparse, the
precision table, the pytest selection), so the first GPU run does not die on an option."""

from __future__ import annotations

import importlib
import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest

tomllib = pytest.importorskip("tomllib", reason="Python < 3.11 has no tomllib")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def dry_run(tmp_path, *args: str) -> list[list[str]]:
    out = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--out", str(tmp_path / "out"), "--python", sys.executable,
                          *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    commands = []
    for line in out.stdout.splitlines():
        if line.startswith("+ "):
            words = shlex.split(line[2:])
            commands.append(words[:-2] if len(words) > 2 and words[-2] == ">" else words)
    return commands


def click_command(name: str) -> click.Command:
    module, func = PYPROJECT["project"]["scripts"][name].split(":")
    return getattr(importlib.import_module(module), func)


def test_syntax_and_no_hidden_failures():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    text = SCRIPT.read_text()
    assert "|| true" not in text and "set -uo pipefail" in text
    out = subprocess.run(["bash", str(SCRIPT), "--frobnicate"], capture_output=True, text=True)
    assert out.returncode == 2 and "unknown option --frobnicate" in out.stderr


def test_every_cli_invocation_parses(tmp_path):
    from anomedge.export.tensorrt import build_parser
    from anomedge.runtime.backends.onnxruntime import PROVIDERS
    from anomedge.runtime.backends.tensorrt import device_index
    from anomedge.runtime.precisions import check_precision

    commands = dry_run(tmp_path)
    seen = set()
    for words in commands:
        if words[0].startswith("ad-"):
            seen.add(words[0])
            with click_command(words[0]).make_context(words[0], words[1:]) as ctx:
                params = ctx.params
            if words[0] == "ad-bench":  # its --backends entries and --device, against the tables
                for entry in params["backends"].split(","):
                    backend, _, precision = entry.partition(":")
                    check_precision(backend, precision)
                    if backend == "onnxruntime":
                        assert params["device"] in PROVIDERS
                    elif backend == "tensorrt":
                        device_index(params["device"])
                    elif backend == "torch":
                        assert params["device"] in ("cpu", "cuda")
        elif words[1:3] == ["-m", "anomedge.export.tensorrt"]:
            seen.add("builder")
            build_parser().parse_args(words[3:])
    assert seen == {"ad-export", "ad-quantize", "ad-bench", "builder"}
    builds = [w for w in commands if w[1:3] == ["-m", "anomedge.export.tensorrt"]]
    assert {(w[w.index("--precision") + 1], "--placement" in w) for w in builds} == {
        ("fp32", False), ("fp16", False), ("int8", False), ("fp32", True)}


def test_reruns_start_from_fresh_copies(tmp_path):
    commands = dry_run(tmp_path)
    copies = [(i, w[-1]) for i, w in enumerate(commands) if w[:2] == ["cp", "-r"]]
    assert len(copies) == 4
    for i, target in copies:
        assert commands[i - 1] == ["rm", "-rf", target]  # no folder nested into last run's copy


def test_install_uses_the_extra_and_swaps_onnxruntime(tmp_path):
    extras = PYPROJECT["project"]["optional-dependencies"]
    for major in ("12", "13"):
        commands = dry_run(tmp_path, "--cuda", major)
        install = next(w for w in commands if w[3:4] == ["install"] and "-e" in w)
        assert install[-1] == f".[export,dev,tensorrt-cu{major}]" and f"tensorrt-cu{major}" in extras
        assert "--extra-index-url" in install and "https://pypi.nvidia.com" in install
        assert [sys.executable, "-m", "pip", "uninstall", "-y", "onnxruntime", "onnxruntime-gpu"] in commands
        pin = next(r for r in extras[f"cu{major}"] if r.startswith("onnxruntime-gpu"))
        assert commands[commands.index(install) + 2][-1] == "onnxruntime-gpu==" + re.search(r"==(\S+)", pin).group(1)
    wheels = dry_run(tmp_path, "--wheels", "/wheelhouse")
    for words in wheels:
        if "install" in words and "pip" in words:
            assert words[words.index("--find-links") + 1] == "/wheelhouse" and "--no-index" in words
            assert "https://pypi.nvidia.com" not in words
    assert not [w for w in dry_run(tmp_path, "--no-install") if "pip" in w]


@pytest.mark.slow
def test_pytest_selection_takes_every_gpu_and_tensorrt_test(tmp_path):
    (selection,) = [w for w in dry_run(tmp_path) if w[1:3] == ["-m", "pytest"]]
    marker = selection[selection.index("-m", 2) + 1]
    assert marker == "gpu or tensorrt"
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", marker, "-p", "no:cacheprovider",
                          *[a for a in selection[3:] if a.startswith("tests")]], cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    collected = {line.split("::")[0] for line in out.stdout.splitlines() if "::" in line}
    marked = {f"tests/{p.name}" for p in (ROOT / "tests").glob("test_*.py")
              if re.search(r"@pytest\.mark\.(gpu|tensorrt)\b", p.read_text())}
    assert marked and collected == marked, out.stdout[-2000:]
