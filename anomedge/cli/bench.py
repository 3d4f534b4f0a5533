"""ad-bench: latency and parity of every backend against the PyTorch reference.

Exit codes: 0 measured (and, with ``--atol``/``--rtol``, every backend within tolerance of the
reference); 1 a backend outside tolerance (Polygraphy-style: |score − ref| ≤ atol + rtol·|ref| for
every image score) or unable to run while a gate was asked for; 2 usage or input error.
"""

from __future__ import annotations

import json
import sys

import click
import numpy as np

from ..runtime.precisions import bench_entries
from .common import format_table, one_line_errors


# "all": every backend:precision of the precision table; unavailable ones are listed with the reason.
ALL_ENTRIES = bench_entries()


def load_frames(data: str, limit: int | None):
    """Test images of a data set spec, or the images of a folder/glob/list → (paths, frames, labels or None)."""
    from ..datasets import load_dataset
    from ..datasets.folder import list_images
    from ..errors import InputError
    from ..runtime.preprocess import read_image

    labels = None
    try:
        split = load_dataset(data)
        paths = list(split.test) or list(split.train)
        if split.test:
            labels = np.asarray(split.test_labels)
    except InputError:
        paths = list_images(data)
    paths = paths[:limit] if limit else paths
    labels = labels[: len(paths)] if labels is not None else None
    return paths, [read_image(p) for p in paths], labels


def model_mib(artifact, report) -> float | None:
    """Size of the ONNX file an onnxruntime/openvino entry runs (the precision variant), MiB."""
    name = report.backend.split(" ")[0]
    if artifact is None or name not in ("onnxruntime", "openvino") or report.error:
        return None
    from ..errors import ArtifactError

    try:
        name = artifact.variant(report.precision if report.precision in ("fp16", "int8") else "fp32")
    except ArtifactError:  # an OpenVINO fp16 without its own file: an inference setting on model.onnx
        name = artifact.variant("fp32")
    return artifact.path(name).stat().st_size / 2**20


def within(ref: np.ndarray, scores: np.ndarray, atol: float, rtol: float) -> bool:
    """Polygraphy's rule on every image score: |score − ref| ≤ atol + rtol·|ref|."""
    return bool(np.all(np.abs(scores - ref) <= atol + rtol * np.abs(ref)))


def _ms(v):
    return f"{v:.2f}"


def rows_for(artifact, reports, labels, gate) -> list[dict[str, object]]:
    """One display row per report: units in the headers, ms to 0.01, FPS to 0.1, Δ in scientific notation,
    agreement in %, AUROC when the data has labels, parity PASS/FAIL when a tolerance was given."""
    from ..calibrate.metrics import auroc

    ref = reports[0].scores if reports and reports[0].backend == "torch" else None
    rows = []
    for r in reports:
        row: dict[str, object] = {"backend": r.backend, "precision": r.precision}
        if r.error:
            rows.append({**row, "note": r.error})
            continue
        size = model_mib(artifact, r)
        row["model MiB"] = "-" if size is None else f"{size:.1f}"
        row.update({f"{k} ms": _ms(v) for k, v in r.latency.stages_p50.items()})
        row.update({"p50 ms": _ms(r.latency.total_p50), "p99 ms": _ms(r.latency.total_p99), "FPS": f"{r.latency.fps:.1f}"})
        if labels is not None and len(set(labels.tolist())) == 2:
            row["AUROC"] = f"{auroc(labels, r.scores):.4f}"
        if r.parity is not None:
            row.update({"max rel Δscore": f"{r.parity.max_rel_score_diff:.1e}", "max Δmap": f"{r.parity.max_map_diff:.1e}",
                        "agreement": f"{100 * r.parity.decision_agreement:.1f} %"})
            if gate is not None and ref is not None:
                row["parity"] = "PASS" if within(ref, r.scores, *gate) else "FAIL"
        rows.append(row)
    return rows


def bench_table(reports, artifact=None, labels=None) -> str:
    """The display table of ``reports`` (no gate)."""
    return table(rows_for(artifact, reports, labels, None))


def table(rows) -> str:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    return format_table(rows, columns)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("artifact", type=click.Path())
@click.option("--data", required=True, help="Images to measure on: a data set spec (test split) or a folder.")
@click.option("--backends", default="onnxruntime", show_default=True, help="Comma list, or 'all'.")
@click.option("--device", default="auto", show_default=True, help="onnxruntime cpu|cuda|tensorrt; OpenVINO CPU|GPU|NPU|AUTO.")
@click.option("--placements", default="host", show_default=True, help="Scoring placements to race: host,graph.")
@click.option("--allow-fallback", is_flag=True, help="Accept onnxruntime's CPU fallback when a GPU provider fails.")
@click.option("--runs", default=100, show_default=True, help="Timed frames per backend (batch 1), after warm-up.")
@click.option("--warmup", default=10, show_default=True)
@click.option("--threads", default=2, show_default=True)
@click.option("--limit", type=int, default=None, help="Use only the first N images for parity.")
@click.option("--no-reference", is_flag=True, help="Skip the PyTorch reference (minutes on big models): latency only, no parity.")
@click.option("--atol", type=float, default=None, help="Gate: fail (exit 1) unless |score − ref| ≤ atol + rtol·|ref| for every image.")
@click.option("--rtol", type=float, default=None, help="Gate: relative tolerance (see --atol; either one turns the gate on).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Also write the results as JSON.")
@click.option("--quiet", is_flag=True, help="No progress lines.")
@click.option("--registry", type=click.Path(dir_okay=False), default=None, help="Run registry database.")
@one_line_errors
def main(artifact, data, backends, device, placements, allow_fallback, runs, warmup, threads, limit, no_reference,
         atol, rtol, json_path, quiet, registry):
    """Measure ARTIFACT on each backend: per-stage p50, end-to-end p50/p99, FPS, AUROC, and parity vs torch."""
    from ..artifact import Artifact
    from ..benchmark import artifact_kernel_race, bench_backends
    from ..errors import InputError

    gate = None
    if atol is not None or rtol is not None:
        if no_reference:
            raise InputError("--atol/--rtol compare against the PyTorch reference; drop --no-reference to gate on parity")
        if (atol or 0) < 0 or (rtol or 0) < 0:
            raise InputError(f"--atol {atol} / --rtol {rtol}: expected tolerances ≥ 0, e.g. --atol 1e-4 --rtol 1e-3")
        gate = (float(atol or 0.0), float(rtol or 0.0))
    loaded = Artifact.load(artifact)
    names = ALL_ENTRIES if backends == "all" else [b.strip() for b in backends.split(",")]
    _, frames, labels = load_frames(data, limit)
    if not frames:
        raise InputError(f"{data}: no images to measure on")
    options = {"device": device, **({"allow_fallback": True} if allow_fallback else {})}

    def say(label: str) -> None:
        if not quiet:
            click.echo(f"bench: {label}: {len(frames)} images for parity, {warmup} + {runs} timed runs …", err=True)

    reports = bench_backends(loaded, frames, names, reference=None if no_reference else "torch", runs=runs,
                             warmup=warmup, threads=threads, placements=[p.strip() for p in placements.split(",")],
                             options=options, on_entry=say)
    rows = rows_for(loaded, reports, labels, gate)
    click.echo(f"{loaded.root} on {len(frames)} images, batch 1, {threads} threads, {runs} timed runs"
               + ("" if not no_reference else "; no reference (--no-reference): no parity"))
    click.echo(table(rows))
    race = artifact_kernel_race(loaded, frames[0])
    if race:
        click.echo("\nkNN search, one frame, k=1 (median of 20): host kernels vs faiss IndexFlatL2; the fastest "
                   "host kernel's and the blocked kernel's GFLOP/s next to this machine's float32 sgemm rate "
                   "(2048³, and the search's own (P,D)·(D,M) shape)")
        click.echo(format_table([race], list(race)))
    if json_path:
        with open(json_path, "w") as handle:
            json.dump([r.row() for r in reports], handle, indent=2)
    from .runs import record_run

    record_run(registry, "bench", artifact, params={"data": data, "backends": names, "runs": runs, "threads": threads},
               latency={f"{r.backend}:{r.precision}": r.row() for r in reports}, metrics=race or {})
    if gate is not None:
        failed = [r for r in rows if r.get("parity") == "FAIL"]
        unrun = [r for r in rows if "note" in r]
        if failed or unrun:
            what = ", ".join(f"{r['backend']} {r['precision']}" for r in failed + unrun)
            click.echo(f"parity FAILED (atol {gate[0]:g}, rtol {gate[1]:g}): {what}", err=True)
            sys.exit(1)
        click.echo(f"parity PASSED: every backend within atol {gate[0]:g} + rtol {gate[1]:g}·|ref| of the reference")
