"""The Docker files, linted without a Docker engine: hadolint when it is on PATH, else a parse check of
every instruction; the runtime and Jetson images must never install torch; compose parses."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
DOCKERFILES = sorted(DOCKER.glob("Dockerfile.*"))
INSTRUCTIONS = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER",
                "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"}
JSON_FORM = {"CMD", "ENTRYPOINT", "VOLUME", "SHELL"}


def instructions(path: Path) -> list[tuple[str, str]]:
    """[(KEYWORD, arguments)] with line continuations joined and comments dropped."""
    out, pending = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        pending += " " + stripped[:-1] if stripped.endswith("\\") else " " + stripped
        if not stripped.endswith("\\"):
            keyword, _, args = pending.strip().partition(" ")
            out.append((keyword, args.strip()))
            pending = ""
    assert not pending, f"{path.name}: dangling line continuation"
    return out


def test_all_three_images_exist():
    assert {p.name for p in DOCKERFILES} == {"Dockerfile.runtime", "Dockerfile.workstation", "Dockerfile.jetson"}


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_every_instruction_parses(path):
    parsed = instructions(path)
    keywords = [k for k, _ in parsed]
    assert set(keywords) <= INSTRUCTIONS, f"unknown instructions {set(keywords) - INSTRUCTIONS}"
    assert all(k == k.upper() for k in keywords)
    assert [k for k in keywords if k != "ARG"][0] == "FROM", "first instruction after ARGs must be FROM"
    for keyword, args in parsed:
        assert args, f"{keyword} without arguments"
        if keyword in JSON_FORM:
            value = json.loads(args)
            assert isinstance(value, list) and all(isinstance(v, str) for v in value), f"{keyword} {args}"
        if keyword == "COPY" and not args.startswith("--from"):
            for src in args.split()[:-1]:
                assert (ROOT / src).exists(), f"COPY source {src} missing from the repository"
        if keyword == "RUN" and "apt-get install" in args:
            assert "--no-install-recommends" in args and "rm -rf /var/lib/apt/lists/*" in args
    users = [args for keyword, args in parsed if keyword == "USER"]
    assert users and users[-1] not in ("root", "0"), "images must run as a non-root user"


@pytest.mark.parametrize("name", ["Dockerfile.runtime", "Dockerfile.jetson"])
def test_edge_images_install_no_torch(name):
    runs = " ".join(args for keyword, args in instructions(DOCKER / name) if keyword == "RUN")
    installs = re.findall(r"pip3? install[^&;]*", runs)
    assert installs, "no pip install found"
    for cmd in installs:
        assert not re.search(r"\btorch|export\]|\[.*export", cmd), f"torch pulled in by: {cmd}"
    assert "find_spec('torch') is not None" in runs, "the image build must assert torch is absent"
    base = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not [d for d in base if d.lower().startswith(("torch", "timm"))], "the base install must stay torch-free"


@pytest.mark.parametrize("name", ["Dockerfile.runtime", "Dockerfile.jetson"])
def test_edge_images_resolve_the_base_install_with_pip(name):
    """numpy / OpenCV / onnxruntime / click come from pip within pyproject's floors: no Ubuntu python3-numpy
    or python3-opencv under a --no-deps install (Ubuntu 22.04's numpy 1.21.5 is below the floor), and the
    build imports the runtime, so an image that cannot start fails to build."""
    runs = " ".join(args for keyword, args in instructions(DOCKER / name) if keyword == "RUN")
    assert not re.search(r"python3-(numpy|opencv)", runs)
    installs = [c for c in re.findall(r"pip3? install[^&;]*", runs) if re.search(r"\s\.(\s|$)|anomedge-\*\.whl", c)]
    assert installs, "anomedge itself is not pip-installed"
    assert not [c for c in installs if "--no-deps" in c], installs
    assert "import anomedge.runtime.pipeline, anomedge.runtime.sources" in runs


def test_compose_parses_and_maps_devices():
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed")
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"inspect", "live-view"}
    assert services["inspect"]["build"]["dockerfile"] == "docker/Dockerfile.runtime"
    assert (DOCKER / services["inspect"]["build"]["context"] / "pyproject.toml").is_file()
    assert any("/dev/video0" in d for d in services["inspect"]["devices"])


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint is not on PATH (parse check above ran instead)")
@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(path):
    result = subprocess.run(["hadolint", "--ignore", "DL3008", "--ignore", "DL3013", str(path)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
