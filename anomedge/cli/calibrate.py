"""ad-calibrate: thresholds from good images or a labelled validation set, written into metadata only."""

from __future__ import annotations

import click

from .common import one_line_errors


def validation_set(spec: str):
    """(paths, labels, mask paths or None) of a labelled set: a data set spec or an MVTec-layout folder."""
    from ..datasets import load_dataset
    from ..errors import InputError

    split = load_dataset(spec)
    if not split.test:
        raise InputError(f"{spec}: no labelled images; expected test/good and test/<defect> folders (MVTec layout)")
    return list(split.test), split.test_labels, split.test_masks


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("artifact", type=click.Path())
@click.option("--good", default=None, help="Good images: folder, glob, .txt list, or a data set spec (its train split).")
@click.option("--val", default=None, help="Labelled validation set: MVTec-layout folder or data set spec (its test split).")
@click.option("--method", type=click.Choice(["quantile", "f1", "frr"]), default="quantile", show_default=True)
@click.option("--q", type=float, default=0.99, show_default=True, help="Quantile of good scores (method quantile).")
@click.option("--target", type=float, default=0.01, show_default=True, help="Target false-reject rate on good parts (method frr).")
@click.option("--backend", default="onnxruntime", show_default=True)
@click.option("--max-pixels", type=click.IntRange(min=1), default=64_000_000, show_default=True,
              help="Pixel budget per image, checked in its header before decoding; larger ones are skipped.")
@click.option("--registry", type=click.Path(dir_okay=False), default=None, help="Run registry database (default: $ANOMEDGE_REGISTRY or ~/.local/share/anomedge/runs.sqlite).")
@one_line_errors
def main(artifact, good, val, method, q, target, backend, max_pixels, registry):
    """Set ARTIFACT's image (and pixel) thresholds; no re-export, old values kept in history."""
    import warnings

    from ..calibrate.apply import calibrate
    from ..errors import InputError
    from .paths import good_images

    if good is None and val is None:
        raise InputError("nothing to calibrate on: pass --good PATH (good images) and/or --val PATH (labelled set)")
    params = {"quantile": {"q": q}, "frr": {"target": target}, "f1": {}}[method]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        block = calibrate(artifact, good_images(good) if good else [], method,
                          validation_set(val) if val else None, backend, max_pixels=max_pixels, **params)
    for w in caught:
        click.echo(f"warning: {w.message}", err=True)
    if block.get("note"):
        click.echo(f"note: {block['note']}", err=True)
    pixel = "none" if block["pixel"] is None else f"{block['pixel']:.6g}"
    click.echo(f"{artifact}: image threshold {block['image']:.6g} ({method}, {block['n_good']} good, "
               f"{block['n_defect']} defective), pixel threshold {pixel}; previous values kept in history")
    from .runs import record_run

    record_run(registry, "calibrate", artifact, params={"method": method, **params, "good": good, "val": val},
               metrics={"threshold": block["image"], "pixel_threshold": block["pixel"]})
