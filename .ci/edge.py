#!/usr/bin/env python3
"""The edge matrix: every artifact kind the workstation exports × every edge environment → ad-run.

Run with the workstation (full developer) venv's Python, after ``make test``::

    .venv/bin/python .ci/edge.py [--work DIR] [--envs base,floors,...] [--kinds patchcore/numpy,...]

1. Exports each artifact kind (``KINDS``) with this venv's ``ad-export`` from a folder of real ELPV cells
   (tiny settings: 64 px, random-init ViT, 2-epoch autoencoder and MAE).
2. Builds the edge venvs (``ENVS``): ``base`` = ``pip install .`` alone; ``floors`` = the lowest versions
   pyproject.toml allows (``FLOORS``, an OpenCV 4.x), then ``pip install --no-deps .``.
3. Runs every artifact on a folder of other real cells through each environment's ``ad-run`` (and
   ``ad-verify`` where the tree has it), once more as an unprivileged user on a read-only copy.
   A cell is OK when ad-run exits 0 with one record per image, each labelled OK or NG with a finite score
   that agrees with the workstation's (relative difference ≤ ``SCORE_RTOL``, same label), and ad-verify
   (when present) exits 0.
4. Prints the table environment × kind and exits 1 on any FAIL.

The venvs install from the package registry (pip's cache makes a second run fast); nothing else is fetched.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import glob
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKSTATION_BIN = Path(sys.executable).parent
SCORE_RTOL = 1e-3  # onnxruntime 1.17 vs current, OpenCV 4.5 vs 5 resize: float32 noise, far below any margin
TRAIN_IMAGES, RUN_IMAGES = 16, 6
PIP = ("-m", "pip", "install", "--quiet", "--disable-pip-version-check")
UNPRIVILEGED = (65534, 65534)  # nobody:nogroup


@dataclass(frozen=True)
class Kind:
    """One artifact kind: ``artifact`` names the exported folder (kinds that differ only in ``run`` share it)."""

    name: str
    artifact: str
    export: tuple[str, ...]
    run: tuple[str, ...] = ()  # options of both ad-run and ad-verify


CNN = ("--image-size", "64")
PATCHCORE = ("--detector", "patchcore", *CNN, "--param", "coreset_fraction=0.25")
KINDS = (
    Kind("patchcore/numpy", "patchcore", PATCHCORE, ("--knn-kernel", "numpy")),
    Kind("patchcore/onnxruntime", "patchcore", PATCHCORE, ("--knn-kernel", "onnxruntime")),
    Kind("patchcore/graph", "patchcore-graph", (*PATCHCORE, "--placement", "graph")),
    Kind("padim", "padim", ("--detector", "padim", *CNN)),
    Kind("global_knn", "global_knn", ("--detector", "global_knn", *CNN)),
    Kind("kmeans", "kmeans", ("--detector", "kmeans", *CNN, "--param", "n_clusters=4")),
    Kind("autoencoder", "autoencoder", ("--detector", "autoencoder", "--image-size", "32", "--param", "width=8",
                                        "--param", "latent_dim=16", "--param", "epochs=2", "--param", "batch_size=4",
                                        "--param", "amp=fp32", "--param", "threads=1")),
    Kind("mae", "mae", ("--detector", "mae", "--image-size", "32", "--param", "dim=32", "--param", "depth=2",
                        "--param", "heads=2", "--param", "decoder_dim=32", "--param", "epochs=2",
                        "--param", "batch_size=4", "--param", "amp=fp32", "--param", "threads=1")),
    Kind("teacher_student", "teacher_student", ("--detector", "teacher_student", *CNN, "--param", "widths=[16]",
                                                "--param", "epochs=2", "--param", "batch_size=4", "--param", "amp=fp32",
                                                "--param", "threads=1")),
    Kind("vit", "vit", ("--detector", "vit", "--image-size", "56", "--param", "weights=none",
                        "--param", 'model_kwargs={"depth": 2}', "--param", "blocks=[0, 1]")),
    Kind("synthetic_seg", "synthetic_seg", ("--detector", "synthetic_seg", *CNN, "--param", "hidden=8",
                                            "--param", "epochs=1", "--param", "batch_size=4", "--param", "threads=1")),
    Kind("simplenet", "simplenet", ("--detector", "simplenet", *CNN, "--param", "hidden=16", "--param", "epochs=1",
                                    "--param", "batch_size=256", "--param", "threads=1")),
    Kind("ensemble", "ensemble", ("--detector", "ensemble", *CNN)),
    Kind("ensemble/graph", "ensemble-graph", ("--detector", "ensemble", *CNN, "--placement", "graph")),
)

# The lowest versions pyproject.toml allows, by the Python the floors venv gets. Python 3.10 is JetPack 6's
# and Ubuntu 22.04's: OpenCV 4.5.4 is Ubuntu 22.04's python3-opencv; numpy 1.21.6 is the lowest
# onnxruntime accepts (Ubuntu's 1.21.5 is below it); onnxruntime 1.18 is the first that loads ONNX IR
# version 10, which the exporter writes (1.17: "Unsupported model IR version: 10, max supported IR
# version: 9"). On 3.11 numpy starts at 1.23.2 and OpenCV's oldest 3.11 wheel is 4.5.5.64.
FLOORS = {
    (3, 10): ("numpy==1.21.6", "opencv-python-headless==4.5.4.60", "onnxruntime==1.18.0", "click==8.1.0"),
    (3, 11): ("numpy==1.23.2", "opencv-python-headless==4.5.5.64", "onnxruntime==1.18.0", "click==8.1.0"),
}
VERSIONS = ("import sys, cv2, numpy, onnxruntime, click; print('python %d.%d.%d' % sys.version_info[:3], "
            "'numpy', numpy.__version__, 'opencv', cv2.__version__, 'onnxruntime', onnxruntime.__version__, "
            "'click', click.__version__)")


@dataclass
class Env:
    """An environment: a venv's ``bin`` folder, optionally run as ``user`` on read-only artifact copies."""

    name: str
    bin: Path | None = None
    user: tuple[int, int] | None = None
    skip: str | None = None  # why it did not run
    versions: str = ""
    cells: dict[str, "Cell"] = field(default_factory=dict)


@dataclass
class Cell:
    run: bool
    verify: bool | None  # None: no ad-verify in this tree
    why: str = ""
    score_diff: float | None = None  # max relative score difference vs the workstation

    @property
    def ok(self) -> bool:
        return self.run and self.verify is not False

    def __str__(self) -> str:
        verify = "-" if self.verify is None else ("OK" if self.verify else "FAIL")
        return f"{'OK' if self.run else 'FAIL'}/{verify}"


def edge_environ(**extra: str) -> dict[str, str]:
    """This process's environment without PYTHONPATH / PYTHONHOME: an edge venv imports only what it installed."""
    return {**{k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}, **extra}


def sh(cmd: list[str], timeout: float, user: tuple[int, int] | None = None, env: dict | None = None,
       ) -> subprocess.CompletedProcess:
    """Run ``cmd`` (as ``user`` when given) with the edge environment unless ``env`` is given."""
    env = edge_environ() if env is None else env
    if user is not None:
        cmd = ["setpriv", f"--reuid={user[0]}", f"--regid={user[1]}", "--clear-groups", "--", *cmd]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as exc:
        return subprocess.CompletedProcess(cmd, 124, exc.stdout or "", f"timed out after {timeout:.0f} s")


def last_line(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
    return lines[-1][:300] if lines else f"exit {proc.returncode}"


def step(message: str) -> None:
    print(f"[edge {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---- 1. data and artifacts -------------------------------------------------------------------------------

def real_images(work: Path) -> tuple[Path, Path]:
    """Copy ELPV cells (from the elpv-dataset package of this venv) into train/ and images/."""
    import elpv_dataset  # the workstation venv's export extra

    cells = sorted((Path(elpv_dataset.__file__).parent / "data" / "images").glob("*.png"))
    if len(cells) < TRAIN_IMAGES + RUN_IMAGES:
        sys.exit(f"edge: elpv-dataset ships {len(cells)} images, {TRAIN_IMAGES + RUN_IMAGES} needed")
    train, images = work / "train", work / "images"
    for folder, chosen in ((train, cells[:TRAIN_IMAGES]), (images, cells[-RUN_IMAGES:])):
        folder.mkdir(exist_ok=True)
        for path in chosen:
            shutil.copy(path, folder / path.name)
    return train, images


def export_all(kinds: list[Kind], train: Path, artifacts: Path) -> dict[str, str]:
    """Export each artifact folder once with the workstation's ad-export → {artifact: error} for failures."""
    failed, done = {}, set()
    for kind in kinds:
        if kind.artifact in done:
            continue
        done.add(kind.artifact)
        out = artifacts / kind.artifact
        if (out / "metadata.json").is_file():  # a --work folder of an earlier run
            step(f"reusing {out}")
            continue
        started = time.perf_counter()
        proc = sh([str(WORKSTATION_BIN / "ad-export"), str(train), *kind.export, "--holdout", "0.25", "--quiet",
                   "--out", str(out), "--registry", str(artifacts.parent / "registry.db")], timeout=900, env=dict(os.environ))
        if proc.returncode != 0:
            failed[kind.artifact] = f"ad-export failed: {last_line(proc)}"
        step(f"exported {kind.artifact} in {time.perf_counter() - started:.0f} s"
             + (f": FAILED {failed[kind.artifact]}" if kind.artifact in failed else ""))
    return failed


# ---- 2. environments -------------------------------------------------------------------------------------

def python_version(python: str) -> tuple[int, int] | None:
    proc = sh([python, "-c", "import sys; print(*sys.version_info[:2])"], timeout=60)
    return tuple(map(int, proc.stdout.split())) if proc.returncode == 0 else None


def find_python(*candidates: str) -> str | None:
    """The first candidate (paths or globs) that runs and is ≥ 3.10."""
    for pattern in candidates:
        for python in sorted(glob.glob(os.path.expanduser(pattern))) or [pattern]:
            if Path(python).is_file() and (python_version(python) or (0, 0)) >= (3, 10):
                return python
    return None


def source_tree(work: Path) -> Path:
    """What the Docker images copy (pyproject.toml, README.md, anomedge/): a clean tree for ``pip install``."""
    src = work / "src"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "anomedge", src / "anomedge", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return src


def make_venv(env: Env, python: str | None, work: Path, installs: list[list[str]]) -> Env:
    if python is None:
        env.skip = "no Python ≥ 3.10 found to build it"
        return env
    venv = work / f"venv-{env.name}"
    shutil.rmtree(venv, ignore_errors=True)
    started = time.perf_counter()
    proc = sh([python, "-m", "venv", str(venv)], timeout=300)
    for args in installs if proc.returncode == 0 else []:
        proc = sh([str(venv / "bin" / "python"), *PIP, *args], timeout=900)
        if proc.returncode != 0:
            break
    if proc.returncode != 0:
        env.skip = f"venv build FAILED: {last_line(proc)}"
        return env
    env.bin = venv / "bin"
    step(f"built {env.name} venv in {time.perf_counter() - started:.0f} s")
    return env


def build_envs(names: list[str], work: Path) -> list[Env]:
    src = str(source_tree(work))
    # A system interpreter (not under /root) so that the same venv also runs as an unprivileged user.
    base_python = find_python("/usr/bin/python3", "/usr/local/bin/python3", sys._base_executable)
    floor_python = find_python("/usr/bin/python3.10", "~/.pyenv/versions/3.10.*/bin/python3.10",
                               os.environ.get("PYENV_ROOT", "/nonexistent") + "/versions/3.10.*/bin/python3.10",
                               base_python or sys._base_executable)
    envs: dict[str, Env] = {}
    if "workstation" in names:
        envs["workstation"] = Env("workstation", WORKSTATION_BIN)
    if "base" in names or "base-unprivileged" in names:
        envs["base"] = make_venv(Env("base"), base_python, work, [[src]])
    if "floors" in names:
        version = python_version(floor_python) if floor_python else None
        pins = FLOORS.get(version)
        if floor_python and pins is None:
            envs["floors"] = Env("floors", skip=f"no floor set for Python {version} ({floor_python})")
        else:
            envs["floors"] = make_venv(Env("floors"), floor_python, work, [list(pins or ()), ["--no-deps", src]])
    if "base-unprivileged" in names:
        envs["base-unprivileged"] = unprivileged(envs["base"])
    for env in envs.values():
        if env.bin is not None:
            environ = dict(os.environ) if env.name == "workstation" else None
            proc = sh([str(env.bin / "python"), "-c", VERSIONS], timeout=120, user=env.user, env=environ)
            env.versions = proc.stdout.strip() or f"(versions unreadable: {last_line(proc)})"
    return [envs[n] for n in names if n in envs]


def unprivileged(base: Env) -> Env:
    """The base venv run as nobody, if this process may switch user and nobody can run that venv."""
    env = Env("base-unprivileged", base.bin, user=UNPRIVILEGED)
    if base.bin is None:
        env.skip = "no base venv"
    elif os.geteuid() != 0:
        env.skip = f"not root (uid {os.geteuid()}): every other row already ran unprivileged"
    elif shutil.which("setpriv") is None:
        env.skip = "setpriv (util-linux) is not installed"
    else:
        probe = sh([str(base.bin / "python"), "-c", "import anomedge"], timeout=60, user=UNPRIVILEGED)
        if probe.returncode != 0:
            env.skip = f"nobody cannot run the base venv: {last_line(probe)}"
    return env


# ---- 3. runs -----------------------------------------------------------------------------------------------

def read_only_copy(artifacts: Path, work: Path) -> Path:
    """Artifacts owned by root, read-only for everyone: an edge service user that writes beside them fails."""
    copy = work / "artifacts-ro"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(artifacts, copy, ignore=shutil.ignore_patterns("registry.db*"))
    for path in sorted(copy.rglob("*"), reverse=True):
        path.chmod(0o555 if path.is_dir() else 0o444)
    copy.chmod(0o555)
    return copy


def records(path: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return []


def max_rel_diff(got: list[dict], reference: list[dict] | None) -> float | None:
    """Largest relative score difference against the workstation's records (None: nothing to compare)."""
    pairs = [(g["score"], r["score"]) for g, r in zip(got, reference or [])
             if isinstance(g.get("score"), float) and isinstance(r.get("score"), float)]
    return max((abs(a - b) / max(abs(b), 1e-12) for a, b in pairs), default=None)


def check_records(got: list[dict], images: int, reference: list[dict] | None) -> str:
    """'' when the records are complete, labelled OK/NG with finite scores and agree with ``reference``."""
    if len(got) != images:
        return f"{len(got)} records for {images} images"
    bad = [r for r in got if r.get("label") not in ("OK", "NG") or not math.isfinite(r.get("score") or math.nan)]
    if bad:
        return f"record {bad[0].get('source')}: label {bad[0].get('label')}, {bad[0].get('error', '')}"
    for mine, ref in zip(got, reference or []):
        diff = abs(mine["score"] - ref["score"]) / max(abs(ref["score"]), 1e-12)
        if diff > SCORE_RTOL or mine["label"] != ref["label"]:
            return (f"{Path(mine['source']).name}: score {mine['score']:.6g} {mine['label']} vs workstation "
                    f"{ref['score']:.6g} {ref['label']} (rel diff {diff:.1e} > {SCORE_RTOL:g})")
    return ""


def run_cell(env: Env, kind: Kind, artifact: Path, images: Path, out: Path, reference: list[dict] | None) -> Cell:
    jsonl = out / f"{kind.name.replace('/', '-')}.jsonl"
    jsonl.unlink(missing_ok=True)
    environ = {**(os.environ if env.name == "workstation" else edge_environ()), "HOME": str(out)}
    proc = sh([str(env.bin / "ad-run"), str(artifact), "--source", str(images), "--jsonl", str(jsonl), "--quiet",
               *kind.run], timeout=300, user=env.user, env=environ)
    count = sum(1 for p in images.iterdir() if p.is_file())
    why = f"ad-run exit {proc.returncode}: {last_line(proc)}" if proc.returncode else \
        check_records(records(jsonl), count, reference)
    verify = None
    if (env.bin / "ad-verify").exists():
        check = sh([str(env.bin / "ad-verify"), str(artifact), *kind.run], timeout=300, user=env.user, env=environ)
        verify = check.returncode == 0
        if not verify:
            why += ("; " if why else "") + f"ad-verify exit {check.returncode}: {last_line(check)}"
    return Cell(not why or why.startswith("ad-verify"), verify, why, max_rel_diff(records(jsonl), reference))


def table(envs: list[Env], kinds: list[Kind]) -> str:
    head = ["environment", *[k.name for k in kinds]]
    rows = [[e.name, *[str(e.cells[k.name]) if k.name in e.cells else "skip" for k in kinds]] for e in envs]
    return "\n".join("| " + " | ".join(r) + " |" for r in [head, ["---"] * len(head), *rows])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, help="working folder, kept; artifacts already exported there are reused "
                                                  "(default: a new temporary one, removed at the end)")
    parser.add_argument("--envs", default="workstation,base,base-unprivileged,floors")
    parser.add_argument("--kinds", default=",".join(k.name for k in KINDS))
    args = parser.parse_args()
    os.umask(0o022)  # venvs and images readable by the unprivileged run
    kinds = [k for k in KINDS if k.name in args.kinds.split(",")]
    work = args.work or Path(tempfile.mkdtemp(prefix="anomedge-edge-"))
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o755)
    try:
        started = time.perf_counter()
        train, images = real_images(work)
        artifacts = work / "artifacts"
        artifacts.mkdir(exist_ok=True)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:  # pip installs while the workstation exports
            building = pool.submit(build_envs, args.envs.split(","), work)
            export_failed = export_all(kinds, train, artifacts)
            envs = building.result()
        read_only = read_only_copy(artifacts, work) if any(e.user for e in envs) else None
        reference: dict[str, list[dict]] = {}
        for env in envs:
            if env.skip:
                continue
            out = work / f"out-{env.name}"
            out.mkdir(exist_ok=True)
            if env.user:
                os.chown(out, *env.user)
            for kind in kinds:
                if kind.artifact in export_failed:
                    env.cells[kind.name] = Cell(False, None, export_failed[kind.artifact])
                    continue
                root = (read_only if env.user else artifacts) / kind.artifact
                cell = run_cell(env, kind, root, images, out, reference.get(kind.name))
                env.cells[kind.name] = cell
                if env.name == "workstation" and cell.run:
                    reference[kind.name] = records(out / f"{kind.name.replace('/', '-')}.jsonl")
            step(f"ran {env.name}: {sum(c.ok for c in env.cells.values())}/{len(env.cells)} OK")
        print(f"\nedge matrix: ad-run / ad-verify per environment × artifact kind ({RUN_IMAGES} real ELPV images "
              f"each; '-' = no ad-verify in this tree), {time.perf_counter() - started:.0f} s\n")
        print(table(envs, kinds))
        print()
        for env in envs:
            diffs = [c.score_diff for c in env.cells.values() if c.score_diff is not None]
            print(f"{env.name}: {env.skip or env.versions}" + (" (as nobody, read-only artifacts)" if env.user else "")
                  + (f"; max rel score diff vs workstation {max(diffs):.1e}" if diffs else ""))
        failures = [(e.name, k, c.why) for e in envs for k, c in e.cells.items() if not c.ok]
        for env_name, kind_name, why in failures:
            print(f"FAIL {env_name} × {kind_name}: {why}")
        broken = [e for e in envs if e.skip and "FAILED" in e.skip]
        return 1 if failures or broken else 0
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
