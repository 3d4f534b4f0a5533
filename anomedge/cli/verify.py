"""ad-verify: prove on this machine that the artifact gives the reference's answers (golden frames).

Runs the golden frames stored at export through the pipeline here — any backend, precision,
placement and kNN kernel — and prints, per run, the max relative score difference, the max map
difference over the map range and the decision agreement vs the PyTorch reference's stored results.
Exit 0 when every run is within tolerance, 1 when one is not, 2 for a bad artifact or one without
golden frames. ``--race`` races the host kNN kernels again and caches the winner beside the artifact.
"""

from __future__ import annotations

import click

from ..scoring.heads import KNN_KERNELS
from .common import format_table, one_line_errors

COLUMNS = ["backend", "precision", "placement", "kernel", "max rel Δscore", "max |Δmap|/range", "agree",
           "tolerance", "status"]
GRAPH_BACKENDS = ("onnxruntime", "openvino")  # those that run model.graph.onnx (TensorRT runs its engine)


def plan_all(artifact) -> list[tuple[str, dict]]:
    """Every (backend, Inspector options) this toolkit can verify for ``artifact``: the torch reference,
    onnxruntime at fp32 (each kNN kernel) and each recorded variant, OpenVINO and TensorRT at fp32,
    TensorRT when the artifact has an engine, and placement graph on the graph backends when it has one."""
    knn = artifact.metadata.scoring.get("kind") == "knn"
    plan: list[tuple[str, dict]] = [("torch", {"placement": "host"})]
    for kernel in (KNN_KERNELS if knn else [None]):
        plan.append(("onnxruntime", {"placement": "host", "knn_kernel": kernel}))
    for precision in artifact.metadata.model.get("variants", {}):
        plan.append(("onnxruntime", {"placement": "host", "precision": precision, "knn_kernel": "numpy" if knn else None}))
    plan.append(("openvino", {"placement": "host"}))
    if artifact.metadata.model.get("engine"):
        plan.append(("tensorrt", {"placement": "host"}))
    if "graph_model" in artifact.metadata.scoring:
        plan += [(b, {"placement": "graph"}) for b in GRAPH_BACKENDS]
    return plan


def run_plan(artifact, plan, device: str, threads: int | None, keep_going: bool):
    """VerifyResult per entry; with ``keep_going`` a backend that cannot run here is a ``skipped`` row
    and any other error a ``FAIL`` row, else errors propagate (one line, exit 2)."""
    from ..errors import AnomedgeError, BackendUnavailable
    from ..runtime.pipeline import Inspector
    from ..runtime.verify import VerifyResult, golden, verify_inspector

    gold = golden(artifact)
    results = []
    for backend, options in plan:
        options = {k: v for k, v in options.items() if v is not None}
        extra = {"threads": threads} if threads else {}
        try:
            with Inspector(artifact, backend, device, **options, **extra) as inspector:
                results.append(verify_inspector(inspector, gold))
        except AnomedgeError as exc:
            if not keep_going:
                raise
            status = "skipped" if isinstance(exc, BackendUnavailable) else "FAIL"
            results.append(VerifyResult(backend, options.get("precision", "fp32"), options.get("placement", "host"),
                                        options.get("knn_kernel"), status, note=str(exc).split(";")[0][:90]))
    return results


RACE_BACKENDS = ("onnxruntime", "openvino", "tensorrt")
"""Backends whose ``infer`` is the frame's graph: --race times whole frames on one of them."""


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("artifact", type=click.Path())
@click.option("--backend", default="onnxruntime", show_default=True, help="onnxruntime | openvino | tensorrt | torch.")
@click.option("--device", default="auto", show_default=True)
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8", "bf16"]), default=None,
              help="Model variant / inference precision (default fp32).")
@click.option("--placement", type=click.Choice(["host", "graph"]), default=None,
              help="Scoring on the host or inside the graph (default: as recorded in the artifact).")
@click.option("--knn-kernel", type=click.Choice(list(KNN_KERNELS)), default=None,
              help="Host kNN kernel (default: the winner of the race on this machine).")
@click.option("--threads", type=int, default=None, help="Intra-op threads (default: all cores).")
@click.option("--all", "run_all", is_flag=True, help="Every backend × precision × placement available here.")
@click.option("--race", is_flag=True, help="Race the host kNN kernels again on this machine (whole frames on --backend) and cache the winner.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON instead of a table.")
@one_line_errors
def main(artifact, backend, device, precision, placement, knn_kernel, threads, run_all, race, as_json):
    """Run ARTIFACT's golden frames here and compare with the PyTorch reference's stored results."""
    import json
    import sys

    from ..artifact import Artifact
    from ..errors import ArtifactError, InputError
    from ..runtime.verify import NO_GOLDEN, golden

    loaded = Artifact.load(artifact)
    if golden(loaded) is None:
        raise ArtifactError(NO_GOLDEN.format(root=loaded.root))
    if race:
        from ..runtime.kernel_race import choose_kernel, cpu_name, frame_companion, knn_head
        from ..runtime.pipeline import Inspector

        if knn_head(loaded) is None:
            raise InputError(f"--race: {loaded.root} has no kNN head to race (scoring kind "
                             f"'{loaded.metadata.scoring.get('kind')}'); drop --race")
        racer = backend if backend in RACE_BACKENDS else "onnxruntime"  # a graph backend: its infer runs the frame
        with Inspector(loaded, racer, device, placement="host", knn_kernel="numpy", threads=threads) as inspector:
            choice = choose_kernel(loaded, fresh=True, companion=frame_companion(inspector.backend, loaded),
                                   backend=inspector.backend.name)
        times = ", ".join(f"{k} {v:.3f} ms" for k, v in choice.ms.items())
        click.echo(f"kNN kernel race on {cpu_name()}: {choice.kernel} wins ({times or choice.how}); "
                   f"cached in {choice.cache or 'nowhere (no writable cache)'}", err=True)
    if run_all:
        plan = plan_all(loaded)
    else:
        options = {"placement": placement, "knn_kernel": knn_kernel, "precision": precision}
        plan = [(backend, options)]
    results = run_plan(loaded, plan, device, threads, keep_going=run_all)
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        click.echo(format_table([r.row() for r in results], COLUMNS))
    failed = [r for r in results if r.failed]
    if failed:
        click.echo(f"error: {len(failed)} of {len(results)} runs outside tolerance on the golden frames", err=True)
        sys.exit(1)
