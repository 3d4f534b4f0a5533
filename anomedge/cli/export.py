"""ad-export: fit a detector on good images and write the artifact folder."""

from __future__ import annotations

import click

from ..errors import InputError
from ..models.detector import DEFAULT_DETECTOR, DETECTORS
from ..runtime.precisions import ALL_PRECISIONS
from .common import one_line_errors, parse_params


# detectors --placement graph does not apply to, and why
_IN_GRAPH = "already scores inside its graph (its anomaly map is the output)"
NO_GRAPH_PLACEMENT = {name: _IN_GRAPH for name in ("autoencoder", "mae", "simplenet", "teacher_student",
                                                    "synthetic_seg")}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("data")
@click.option("--detector", default=DEFAULT_DETECTOR, show_default=True, help=" | ".join(DETECTORS) + ".")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Artifact folder to write.")
@click.option("--backbone", default=None, help="timm model name (default: the detector's, tf_efficientnet_lite0).")
@click.option("--stages", default=None, help="Backbone stages, e.g. 2,4.")
@click.option("--weights", default=None, help="efficientnet-lite0 | none | hub | PATH (.safetensors/.pth).")
@click.option("--image-size", type=int, default=None, help="Square input size in pixels.")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="Detector parameter (repeatable), e.g. coreset_fraction=0.05.")
@click.option("--holdout", default=0.1, show_default=True, help="Fraction of good images held out to set the default threshold.")
@click.option("--quantile", default=0.99, show_default=True, help="Default threshold = this quantile of held-out good scores.")
@click.option("--format", "formats", default="onnx", show_default=True,
              help="Comma list of onnx, engine (TensorRT, on a GPU machine), openvino.")
@click.option("--precision", type=click.Choice(ALL_PRECISIONS), default="fp32", show_default=True,
              help="Precision of the extra formats (int8 calibrates on the training images).")
@click.option("--placement", type=click.Choice(["host", "graph"]), default="host", show_default=True,
              help="graph: also write model.graph.onnx (backbone + kNN/Mahalanobis scoring in one graph; an ensemble's members fused on the host) and use it by default.")
@click.option("--tile", type=int, default=None,
              help="Tiled inspection: fit on (and inspect) square tiles of this many frame pixels (docs/tiling.md).")
@click.option("--overlap", type=int, default=32, show_default=True, help="--tile: overlap of neighbouring tiles in pixels.")
@click.option("--tile-blend", type=click.Choice(["linear", "max"]), default="linear", show_default=True,
              help="--tile: how overlapping tile maps are stitched.")
@click.option("--tile-mode", type=click.Choice(["shared", "per_position"]), default="shared", show_default=True,
              help="--tile: one model for every tile (shared); per_position is not supported yet.")
@click.option("--sign", "sign_key", type=click.Path(dir_okay=False), default=None,
              help="Sign the artifact with this ed25519 private key (PEM; see ad-sign --keygen).")
@click.option("--quiet", is_flag=True, help="Print only the artifact path.")
@click.option("--registry", type=click.Path(dir_okay=False), default=None, help="Run registry database.")
@one_line_errors
def main(data, detector, out, backbone, stages, weights, image_size, params, holdout, quantile, formats, precision,
         placement, tile, overlap, tile_blend, tile_mode, sign_key, quiet, registry):
    """Fit DETECTOR on the good images of DATA and export an artifact folder.

    DATA is a data set (elpv:mono, elpv:poly, digits:7, synthetic:brick) or a folder (MVTec layout
    or plain good images).
    """
    from ..datasets import load_dataset
    from ..export.fit import build_detector, fit_and_export
    from ..export.formats import check_options, parse_formats
    from ..models.backbones import BackboneSpec

    if sign_key:
        from ..artifact.signing import check_private_key

        check_private_key(sign_key)  # a wrong key fails before the fit, not after it
    values = parse_params(params)
    tiling = None
    if tile is not None:
        from ..runtime.tiling import TilingSpec

        tiling = TilingSpec(tile, overlap, tile_blend, tile_mode)
    if backbone or stages or weights:
        spec = BackboneSpec.for_model(backbone or "tf_efficientnet_lite0",
                                      stages=tuple(int(s) for s in stages.split(",")) if stages else None,
                                      weights=weights)
        values["backbone"] = spec.to_dict()
    if image_size:
        values["image_size"] = image_size
    if placement == "graph" and detector in NO_GRAPH_PLACEMENT:
        raise InputError(f"--placement graph: {detector} {NO_GRAPH_PLACEMENT[detector]}; it applies to the "
                         "kNN / Mahalanobis detectors and their ensemble — drop it")
    rows = parse_formats(formats)
    fmt_options = {row.name: {"precision": precision,
                              **({"calib": []} if row.name in ("onnx", "engine") and precision == "int8" else {}),
                              **({"placement": placement} if row.name == "engine" and placement else {})}
                   for row in rows}
    for row in rows:
        check_options(row, fmt_options[row.name])
    progress = None if not quiet else False
    model = build_detector(detector, values, progress)  # every parameter checked before any data is read
    split = load_dataset(data)
    if not quiet:
        click.echo(f"fitting {detector} on {len(split.train)} good images of {data}", err=True)
    report = fit_and_export(split.train, detector, values, out, holdout=holdout, quantile=quantile,
                            progress=progress, model=model, tiling=tiling)
    root = report.artifact.root
    if placement == "graph":  # before the formats: a graph-placement engine is built from model.graph.onnx
        _use_graph_placement(root)
    for row in rows:
        if row.name == "onnx" and precision == "fp32":
            continue
        opts = dict(fmt_options[row.name])
        if "calib" in opts:
            opts["calib"] = list(split.train[:64])
        if not quiet:
            click.echo(f"{row.name}: exporting ({precision}) …", err=True)
        path = row.exporter(root, **opts)
        if not quiet:
            click.echo(f"{row.name}: wrote {path}", err=True)
    from ..artifact import Artifact
    from .runs import record_run

    if sign_key:
        from ..artifact.signing import sign

        sign(root, sign_key)
    report.artifact = Artifact.load(root)
    meta = report.artifact.metadata
    record_run(registry, "export", str(report.artifact.root),
               params={"data": data, "detector": detector, "model": meta.model, "scoring": meta.scoring,
                       "postprocess": meta.postprocess},
               metrics={"threshold": report.threshold, "fit_seconds": report.fit_seconds,
                        "export_seconds": report.export_seconds})
    for text in report.warnings:
        click.echo(f"warning: {text}", err=True)
    if quiet:
        click.echo(str(report.artifact.root))
        return
    size = sum((report.artifact.root / f).stat().st_size for f in report.artifact.metadata.files) / 2**20
    click.echo(f"wrote {report.artifact.root}: {', '.join(report.artifact.metadata.files)} ({size:.1f} MiB); "
               f"fit {report.fit_seconds:.1f} s on {report.n_fit} images, export {report.export_seconds:.1f} s; "
               f"threshold {_number(report.threshold)} from {report.n_holdout} held-out good images")


def _number(value) -> str:
    return "none" if value is None else f"{value:.6g}"


def _use_graph_placement(root) -> None:
    """Write model.graph.onnx and make placement "graph" the artifact's default."""
    from ..artifact import Artifact
    from ..export.writer import add_graph_placement

    add_graph_placement(root)
    with Artifact.edit(root) as edit:
        edit.meta["scoring"]["placement"] = "graph"
