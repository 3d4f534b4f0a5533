"""ad-mask: set, clear or show an artifact's ignore mask (regions where anomalies are harmless).

    ad-mask ARTIFACT --template FRAME.png        # a frame at model resolution to draw the mask on
    ad-mask ARTIFACT --set MASK.png              # non-zero (white) pixels = ignore; model resolution
    ad-mask ARTIFACT --polygons '[[[0,0],[20,0],[20,10],[0,10]]]'   # model pixels
    ad-mask ARTIFACT --clear
    ad-mask ARTIFACT                             # show: the ignored fraction, or "no ignore mask"

The mask is ``ignore_mask_<sha12>.npy`` ((H,W) uint8, named by its content) listed in the hashed contract and named by
``postprocess.ignore_mask``; it is written through ``Artifact.edit`` (re-hashed; a stale signature is
removed with a warning: sign again). No re-export. A running ``ad-run`` needs a restart to use it.
Semantics: ``anomedge.scoring.mask``; why it is contract: docs/drift-and-masks.md.
"""

from __future__ import annotations

from pathlib import Path

import click

from .common import one_line_errors


def _read_png(path: str):
    import cv2
    import numpy as np

    from ..errors import InputError

    data = np.fromfile(path, np.uint8) if Path(path).is_file() else None
    image = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE) if data is not None and data.size else None
    if image is None:
        raise InputError(f"--set {path}: not a readable image; give a PNG at model resolution, white = ignore")
    return (image > 127).astype(np.uint8)


def write_mask(root: str | Path, mask) -> float:
    """Store (H,W) ``mask`` (non-zero = ignore) in the artifact at ``root``; returns the ignored fraction.

    The file is named by its content (``ignore_mask_<sha12>.npy``) so metadata.json switches from the old
    mask to the new one in its single atomic write: a failed or concurrent edit never leaves a listed
    file whose hash no longer matches."""
    import hashlib
    import io

    import numpy as np

    from ..artifact import Artifact
    from ..scoring.mask import check_mask, mask_size

    root = Path(root)
    with Artifact.edit(root) as edit:
        pixels = check_mask(np.asarray(mask), mask_size(edit.artifact.metadata), "the ignore mask")
        buffer = io.BytesIO()
        np.save(buffer, pixels.astype(np.uint8), allow_pickle=False)
        name = f"ignore_mask_{hashlib.sha256(buffer.getvalue()).hexdigest()[:12]}.npy"
        old = edit.meta["postprocess"].get("ignore_mask")
        new_file = not (root / name).exists()
        try:
            if new_file:
                (root / name).write_bytes(buffer.getvalue())
            edit.add_file(name)
            if old not in (None, name):
                edit.meta["files"].pop(old, None)
            edit.meta["postprocess"]["ignore_mask"] = name
        except BaseException:
            if new_file:
                (root / name).unlink(missing_ok=True)
            raise
    if old not in (None, name):
        (root / old).unlink(missing_ok=True)
    return float(pixels.mean())


def clear_mask(root: str | Path) -> bool:
    """Remove the ignore mask; False if there was none."""
    from ..artifact import Artifact

    root = Path(root)
    with Artifact.edit(root) as edit:
        name = edit.meta["postprocess"].pop("ignore_mask", None)
        if name is not None:
            edit.meta["files"].pop(name, None)
    if name is not None:
        (root / name).unlink(missing_ok=True)
    return name is not None


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("artifact", type=click.Path(file_okay=False))
@click.option("--set", "set_png", type=click.Path(dir_okay=False), default=None,
              help="Mask image at model resolution: non-zero (white) = ignore.")
@click.option("--polygons", default=None, help="JSON [[[x, y], ...], ...] in model pixels: filled = ignore.")
@click.option("--clear", is_flag=True, help="Remove the ignore mask.")
@click.option("--template", type=click.Path(dir_okay=False), default=None,
              help="Write a frame at model resolution (the first golden frame) to draw the mask on.")
@one_line_errors
def main(artifact, set_png, polygons, clear, template):
    """Set (--set / --polygons), clear (--clear) or show ARTIFACT's ignore mask."""
    import cv2
    import numpy as np

    from ..artifact import Artifact
    from ..errors import InputError
    from ..scoring.mask import load_ignore_mask, mask_size, polygons_mask

    if sum(x is not None and x is not False for x in (set_png, polygons, clear or None, template)) > 1:
        raise InputError("give at most one of --set MASK.png, --polygons JSON, --clear, --template FRAME.png")
    if clear:
        click.echo(f"{artifact}: ignore mask removed" if clear_mask(artifact) else f"{artifact}: had no ignore mask")
        return
    loaded = Artifact.load(artifact)
    height, width = mask_size(loaded.metadata)  # the model input; a tiled artifact: the frame
    if template:
        gold = None if loaded.metadata.tiling else loaded.metadata.model.get("golden")
        frame = loaded.array(gold.get("frames", "golden_frames.npy"))[0] if gold else np.zeros((height, width, 3), np.uint8)
        try:
            written = cv2.imwrite(template, frame)
        except cv2.error:  # an extension OpenCV cannot write
            written = False
        if not written:
            raise InputError(f"--template {template}: cannot write a PNG there; give a writable path ending in .png")
        click.echo(f"wrote {template} ({width}×{height}): paint the regions to ignore white, the rest black")
        return
    if set_png or polygons:
        mask = _read_png(set_png) if set_png else polygons_mask(polygons, (height, width))
        fraction = write_mask(artifact, mask)
        click.echo(f"{artifact}: ignore mask set, {fraction:.1%} of the {width}×{height} input ignored "
                   f"(artifact sha256 {Artifact.load(artifact).sha256[:16]}…; restart ad-run to use it)")
        return
    mask = load_ignore_mask(loaded)
    click.echo(f"{artifact}: no ignore mask" if mask is None else
               f"{artifact}: ignore mask {loaded.metadata.postprocess['ignore_mask']}, {mask.fraction:.1%} ignored")


if __name__ == "__main__":
    main()
