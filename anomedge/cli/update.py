"""ad-update: add new good images to a PaDiM / PatchCore artifact without a refit; writes a NEW artifact."""

from __future__ import annotations

import click

from .common import one_line_errors


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("artifact", type=click.Path())
@click.option("--good", required=True, help="New good images: folder, glob, .txt list, or a data set spec (its train split).")
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="New artifact folder (must not exist). Default: ARTIFACT-v<N> next to it.")
@click.option("--holdout", default=0.1, show_default=True,
              help="Fraction of the new images held out (not added) to re-calibrate the image threshold.")
@click.option("--quantile", default=0.99, show_default=True, help="New threshold = this quantile of held-out good scores.")
@click.option("--keep-threshold", is_flag=True, help="Add every new image and keep the thresholds in force.")
@click.option("--max-bank-rows", type=click.IntRange(min=1), default=None,
              help="PatchCore: bank size bound. Default: coreset_fraction × all training patches (a refit's size).")
@click.option("--sign", "sign_key", type=click.Path(dir_okay=False), default=None,
              help="Sign the new artifact with this ed25519 private key (the input's signature does not carry over).")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--max-pixels", type=click.IntRange(min=1), default=64_000_000, show_default=True,
              help="Pixel budget per image, checked in its header before decoding; larger ones are skipped.")
@click.option("--quiet", is_flag=True, help="Print only the new artifact's path.")
@one_line_errors
def main(artifact, good, out, holdout, quantile, keep_threshold, max_bank_rows, sign_key, batch_size, max_pixels,
         quiet):
    """Add the good images of GOOD to ARTIFACT (padim, patchcore) and write the result as a new artifact."""
    import warnings

    from ..update.apply import update_artifact
    from .paths import good_images

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = update_artifact(artifact, good_images(good), out, holdout=holdout, keep_threshold=keep_threshold,
                                 quantile=quantile, max_bank_rows=max_bank_rows, sign_key=sign_key,
                                 batch_size=batch_size, max_pixels=max_pixels, progress=False if quiet else None)
    for w in caught:
        click.echo(f"warning: {w.message}", err=True)
    for note in report.notes:
        click.echo(f"note: {note}", err=True)
    root = report.artifact.root
    if report.was_signed and not report.signed:
        click.echo(f"note: {report.source} was signed; {root} is a new contract and is NOT signed: "
                   f"sign it with ad-sign {root} --key KEY (or pass --sign KEY)", err=True)
    if quiet:
        click.echo(str(root))
        return
    click.echo(f"wrote {root} ({report.detector} v{report.version}, from {report.source}): {_summary(report)}; "
               f"{report.seconds:.1f} s")


def _number(value) -> str:
    return "none" if value is None else f"{value:.6g}"


def _summary(report) -> str:
    s = report.summary
    state = {"n_train": lambda v: f"training images {v[0]} → {v[1]}",
             "bank_rows": lambda v: f"bank {v[0]} → {v[1]} rows (limit {s.get('max_bank_rows')}, "
                                    f"{s.get('far_patches')} of {s.get('new_patches')} new patches beyond the coverage "
                                    f"radius {s.get('coverage_radius', 0):.4g})"}
    parts = [f"+{report.n_added} images" + (f" ({len(report.skipped)} skipped)" if report.skipped else "")]
    parts += [fmt(s[key]) for key, fmt in state.items() if key in s]
    if report.n_holdout:
        parts.append(f"threshold {_number(report.threshold_before)} → {_number(report.threshold_after)} "
                     f"from {report.n_holdout} held-out new images")
    else:
        parts.append(f"threshold kept ({_number(report.threshold_after)})")
    return ", ".join(parts)


if __name__ == "__main__":
    main()
