"""The host head of ``scoring.kind = ensemble``: several member heads over ONE graph pass, fused.

Metadata (``scoring``): ``members`` — a list of
``{"name", "detector", "output", "prefix", "scoring", "postprocess", "norm"}``:
``output`` is the graph output the member reads (its ``features``), ``prefix`` the prefix of its
arrays in the artifact (``m0_`` → ``m0_mean.npy``), ``scoring`` / ``postprocess`` its own blocks (a
``knn`` or ``mahalanobis`` head, its reduction and blur), ``norm = {"score": {"loc", "scale"},
"map": {"loc", "scale"}}`` its normalisation constants, measured on held-out good images at fit.

The rule (``rule = "mean"``), per member i with image score sᵢ (its own reduction of its own patch
scores) and anomaly map Mᵢ (its own upsample + blur to the input size H×W):
    score = meanᵢ (sᵢ − locᵢˢ) / scaleᵢˢ,    map = meanᵢ (Mᵢ − locᵢᵐ) / scaleᵢᵐ   (H,W).
``normalisation`` names how loc / scale were measured (``NORMALISATIONS``): ``zscore`` — mean and
standard deviation (ddof 1); ``robust`` — median and 1.4826·MAD. Under an ignore mask each member
reduces and maps under the mask (``scoring.mask.masked_postprocess``) before the fusion.

Placement ``graph`` (``scoring.graph.build_ensemble_head``): ``model.graph.onnx`` outputs each member's
patch scores as ``scores_output(member)`` (``m0_patch_scores`` …); ``EnsembleGraphHead`` passes them
through and fuses them here, as the host head does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import ArtifactError, InputError
from .mask import IgnoreMask, masked_postprocess
from .postprocess import anomaly_maps, image_scores

MAD_TO_SIGMA = 1.4826  # 1 / Φ⁻¹(3/4): the MAD of a normal sample × this = its σ


def _zscore(values: np.ndarray) -> tuple[float, float]:
    return float(values.mean()), float(values.std(ddof=1))


def _robust(values: np.ndarray) -> tuple[float, float]:
    median = float(np.median(values))
    return median, float(MAD_TO_SIGMA * np.median(np.abs(values - median)))


NORMALISATIONS: dict[str, Callable[[np.ndarray], tuple[float, float]]] = {"zscore": _zscore, "robust": _robust}
RULES = ("mean",)


def norm_constants(values: np.ndarray, normalisation: str, what: str) -> dict[str, float]:
    """{"loc", "scale"} of ``values`` (any shape, float64 inside) by ``normalisation``; a non-finite or
    zero scale is an InputError (too few or identical held-out images)."""
    if normalisation not in NORMALISATIONS:
        raise InputError(f"normalisation '{normalisation}': expected one of {', '.join(NORMALISATIONS)}")
    flat = np.asarray(values, np.float64).ravel()
    if flat.size < 2:
        raise InputError(f"{what}: {flat.size} held-out value(s); the normalisation needs at least 2 — "
                         "use more good images or a larger norm_fraction")
    loc, scale = NORMALISATIONS[normalisation](flat)
    if not (np.isfinite(loc) and np.isfinite(scale) and scale > 0):
        raise InputError(f"{what}: held-out loc {loc:.4g} / scale {scale:.4g}: expected a finite, positive scale — "
                         "the held-out good images score identically; use more (different) good images")
    return {"loc": loc, "scale": scale}


class MemberArtifact:
    """What a single-detector head reads from an artifact (``metadata.scoring``, ``array``, ``has``,
    ``path``, ``root``), for one ensemble member: its scoring block and its prefixed files."""

    class _Meta:
        def __init__(self, scoring: dict[str, Any], postprocess: dict[str, Any]):
            self.scoring, self.postprocess = scoring, postprocess

    def __init__(self, member: dict[str, Any], array: Callable[[str], np.ndarray],
                 has: Callable[[str], bool] = lambda name: False, path: Callable[[str], Path] | None = None,
                 root: Path | str = "<memory>"):
        self.metadata = self._Meta(member["scoring"], member["postprocess"])
        self.prefix = member["prefix"]
        self._array, self._has, self._path, self.root = array, has, path, root

    @classmethod
    def of(cls, artifact, member: dict[str, Any]) -> "MemberArtifact":
        prefix = member["prefix"]
        return cls(member, lambda n: artifact.array(prefix + n), lambda n: artifact.has(prefix + n),
                   lambda n: artifact.path(prefix + n), f"{artifact.root} (member {member['name']})")

    def array(self, name: str) -> np.ndarray:
        return self._array(name)

    def has(self, name: str) -> bool:
        return self._has(name)

    def path(self, name: str) -> Path:
        if self._path is None:
            raise ArtifactError(f"{self.root}: no file {self.prefix}{name}")
        return self._path(name)


def member_postprocess(patch_scores: np.ndarray, member: dict[str, Any], size: tuple[int, int],
                       mask: IgnoreMask | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One member's (N,h,w) patch scores → its raw image scores (N,) and maps (N,H,W), as a single detector."""
    post = member["postprocess"]
    if mask is not None:
        return masked_postprocess(patch_scores, mask, size, post["blur_sigma"], post["reduction"])
    return image_scores(patch_scores, post["reduction"]), anomaly_maps(patch_scores, size, post["blur_sigma"])


def fuse(scores: list[np.ndarray], maps: list[np.ndarray], members: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """The documented rule: mean of the normalised member scores (N,) and maps (N,H,W), float32."""
    score = np.mean([(np.asarray(s, np.float64) - m["norm"]["score"]["loc"]) / m["norm"]["score"]["scale"]
                     for s, m in zip(scores, members)], axis=0)
    fused = np.zeros(maps[0].shape, np.float32)
    for mp, m in zip(maps, members):
        fused += (mp - np.float32(m["norm"]["map"]["loc"])) * np.float32(1.0 / (m["norm"]["map"]["scale"] * len(members)))
    return score.astype(np.float32), fused


def scores_output(member: dict[str, Any]) -> str:
    """The graph output holding ``member``'s (N,h,w) patch scores under placement graph: ``m0_patch_scores``."""
    return f"{member['prefix']}patch_scores"


class _Fusion:
    """What both ensemble heads share: ``members``, ``size`` (H,W) and ``postprocess``."""

    def __init__(self, artifact):
        self.members = list(artifact.metadata.scoring["members"])
        self.size = (artifact.metadata.input.height, artifact.metadata.input.width)

    def postprocess(self, patch_scores: tuple[np.ndarray, ...], mask: IgnoreMask | None = None):
        parts = [member_postprocess(p, m, self.size, mask) for p, m in zip(patch_scores, self.members)]
        return fuse([s for s, _ in parts], [mp for _, mp in parts], self.members)


class EnsembleGraphHead(_Fusion):
    """Placement graph: ``__call__(outputs)`` → the members' patch scores the graph computed (a tuple of
    (N,hᵢ,wᵢ)); ``postprocess`` fuses them."""

    kernel = None

    def __call__(self, outputs: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
        names = [scores_output(m) for m in self.members]
        missing = [n for n in names if n not in outputs]
        if missing:
            raise ArtifactError(f"graph outputs {sorted(outputs)}: expected {', '.join(missing)}; run model.graph.onnx "
                                "(placement graph) or use placement host")
        return tuple(outputs[n] for n in names)


class EnsembleHead(_Fusion):
    """``__call__(outputs)`` → a tuple of member patch scores ((N,hᵢ,wᵢ) each); ``postprocess(that, mask)``
    → (scores (N,), maps (N,H,W)) by ``fuse``. ``kernel`` overrides the kNN kernel of kNN members."""

    def __init__(self, artifact, kernel: str | None = None, heads: dict | None = None):
        from .heads import HEADS

        super().__init__(artifact)
        table = heads or HEADS
        self.heads = [table[m["scoring"]["kind"]](MemberArtifact.of(artifact, m),
                                                  kernel if m["scoring"]["kind"] == "knn" else None)
                      for m in self.members]
        kernels = [getattr(h, "kernel", None) for h in self.heads]
        self.kernel = next((k for k in kernels if k), None)

    def __call__(self, outputs: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
        missing = [m["output"] for m in self.members if m["output"] not in outputs]
        if missing:
            raise ArtifactError(f"graph outputs {sorted(outputs)}: expected {', '.join(missing)}; re-export the artifact")
        return tuple(head({"features": outputs[m["output"]]}) for head, m in zip(self.heads, self.members))
