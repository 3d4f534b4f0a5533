"""Part-respecting training augmentations: flipped / rotated copies of the good training images.

A detector's ``augment`` option is ``"none"`` or a comma list of ``VIEWS`` names (``"hflip,vflip,rot180"``).
Each named view adds one transformed copy of every training image *before* the backbone, so the fitted
statistics / bank / discriminator see the features of the transformed part (a feature-level copy per
view, not a transform of the features). Only symmetries a real part has belong here: a solar cell is
symmetric under flips and 180° rotation (its busbars are), a part with a text label is not.
The runtime never augments: test frames go through the graph as they are.

``parse_augment(text)`` → tuple of view names (validated, in the order given, no duplicates);
``with_views(batches, names)`` yields each (B,3,H,W) batch and then its transformed copies.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

import torch

from ..errors import InputError

VIEWS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "hflip": lambda x: torch.flip(x, dims=(-1,)),
    "vflip": lambda x: torch.flip(x, dims=(-2,)),
    "rot180": lambda x: torch.flip(x, dims=(-2, -1)),
}
NONE = "none"


def parse_augment(text: str) -> tuple[str, ...]:
    """``"none"`` / ``""`` → (); ``"hflip,rot180"`` → ("hflip", "rot180"); anything else an InputError."""
    if not isinstance(text, str):
        raise InputError(f"augment {text!r}: expected 'none' or a comma list of {', '.join(VIEWS)}")
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if names in ((), (NONE,)):
        return ()
    unknown = [n for n in names if n not in VIEWS]
    if unknown:
        raise InputError(f"augment '{text}': unknown view(s) {', '.join(unknown)}; expected 'none' or a comma "
                         f"list of {', '.join(VIEWS)} (e.g. hflip,vflip,rot180)")
    if len(set(names)) != len(names):
        raise InputError(f"augment '{text}': a view is named twice; name each at most once")
    return names


def with_views(batches: Iterable[torch.Tensor], names: tuple[str, ...]) -> Iterator[torch.Tensor]:
    """Each (B,3,H,W) batch, then one transformed copy per view name (same shape)."""
    for batch in batches:
        yield batch
        for name in names:
            yield VIEWS[name](batch)
