"""ad-triton: write a Triton model repository from an artifact (python-backend and / or native ONNX form)."""

from __future__ import annotations

import click

from .common import one_line_errors


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("artifact", type=click.Path())
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Model repository folder.")
@click.option("--form", type=click.Choice(["python", "onnx", "both"]), default="python", show_default=True,
              help="python: Triton's python backend running the anomedge runtime (any Triton, CPU included); "
                   "onnx: one ONNX graph (backbone + scoring + map) for the onnxruntime / TensorRT backend.")
@click.option("--name", default="anomedge", show_default=True, help="Model name (the onnx form is NAME_onnx).")
@click.option("--max-batch", type=int, default=8, show_default=True, help="max_batch_size: the dynamic batcher's cap.")
@click.option("--instances", type=int, default=1, show_default=True, help="Model instances (instance_group count).")
@click.option("--version", "version", type=int, default=1, show_default=True, help="Version folder to write (immutable).")
@click.option("--queue-delay-us", type=int, default=2000, show_default=True,
              help="Dynamic batching: how long a request may wait for others to fill a batch.")
@click.option("--threads", type=int, default=0, show_default=True, help="python form: onnxruntime threads per instance (0 = all cores).")
@click.option("--onnx-kind", type=click.Choice(["gpu", "cpu"]), default="gpu", show_default=True,
              help="onnx form: instance_group kind.")
@click.option("--accelerator", type=click.Choice(["none", "tensorrt"]), default="none", show_default=True,
              help="onnx form: run the graph through onnxruntime's TensorRT accelerator on the server.")
@one_line_errors
def main(artifact, out, form, name, max_batch, instances, version, queue_delay_us, threads, onnx_kind, accelerator):
    """Write a Triton model repository for ARTIFACT into --out; prints each model folder."""
    from ..serving.triton import ServingOptions, write_repository

    forms = ("python", "onnx") if form == "both" else (form,)
    written = write_repository(artifact, out, forms, ServingOptions(max_batch, instances, queue_delay_us), version,
                               name, threads, accelerator, f"KIND_{onnx_kind.upper()}")
    for kind, folder in written.items():
        click.echo(f"{kind}: {folder}")
