"""ad-quantize: add an FP16 or INT8 (Q/DQ) variant of model.onnx to an artifact."""

from __future__ import annotations

import click

from ..runtime.precisions import VARIANT_PRECISIONS
from .common import one_line_errors


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("artifact", type=click.Path())
@click.option("--precision", type=click.Choice(VARIANT_PRECISIONS), required=True)
@click.option("--calib", default=None, help="Good images for INT8 calibration: folder, glob, list or data set spec.")
@click.option("--limit", default=64, show_default=True, help="Use at most this many calibration images.")
@click.option("--method", type=click.Choice(["minmax", "entropy", "percentile"]), default="minmax", show_default=True)
@click.option("--exclude", default="", help="Comma list of node names to keep in float (mixed INT8).")
@one_line_errors
def main(artifact, precision, calib, limit, method, exclude):
    """Write model.<precision>.onnx beside model.onnx and register its hash in metadata."""
    import warnings

    from ..errors import InputError
    from ..export.precision import add_variant
    from .paths import good_images

    if precision == "int8" and not calib:
        raise InputError("INT8 needs calibration images: pass --calib PATH (good images)")
    images = good_images(calib)[:limit] if calib else []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = add_variant(artifact, precision, images, method, [n for n in exclude.split(",") if n])
    for w in caught:
        click.echo(f"warning: {w.message}", err=True)
    click.echo(f"wrote {path} ({path.stat().st_size / 2**20:.2f} MiB); run it with --precision {precision}")
