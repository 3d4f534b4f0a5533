"""Proof on the target: the artifact's golden frames through this machine's pipeline vs the reference.

At export (``export.writer.write_golden``) the artifact gets a few frames at model resolution (uint8
BGR, ``golden_frames.npy`` (N,H,W,3)) with the PyTorch reference's image scores
(``golden_scores.npy`` (N,) float32) and anomaly maps (``golden_maps.npy`` (N,H,W) float32), all
hashed, recorded in ``model.golden``. ``verify_inspector(inspector)`` runs them through an
``Inspector`` — whatever backend, precision, placement and kernel it was built with — and compares:

- max relative score difference ``|s − s_ref| / |s_ref|``,
- max ``|map − map_ref|`` / (reference map range) over frames,
- decision agreement at the artifact's current image threshold (n/a without one),

against a ``Tolerance``: float32 ``FP32`` (1e-4 relative on scores, 1e-3 of the map range, identical
decisions); a reduced-precision variant uses the tolerance measured and recorded when it was made
(``model.variant_params[precision].verify_tolerance``, see ``measure_tolerance``). A precision with
no recorded tolerance is reported ``unchecked`` (numbers shown, never a failure).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from ..artifact import Artifact
from ..errors import ArtifactError

GOLDEN_FILES = {"frames": "golden_frames.npy", "scores": "golden_scores.npy", "maps": "golden_maps.npy"}
NO_GOLDEN = ("{root}: no golden frames (exported before ad-verify existed); re-export with ad-export, or add them "
             "on the workstation: python -m anomedge.export.writer {root} --golden GOOD_IMAGES")


@dataclass(frozen=True)
class Tolerance:
    """score_rel: max relative score difference; map: max |Δmap| / map range; agreement: min decision agreement."""

    score_rel: float
    map: float
    agreement: float


FP32 = Tolerance(score_rel=1e-4, map=1e-3, agreement=1.0)
MARGIN, SCORE_FLOOR, MAP_FLOOR = 2.0, 1e-4, 1e-3  # recorded tolerance = max(MARGIN × measured, floor)


@dataclass
class Parity:
    max_rel_score_diff: float
    max_map_diff: float  # max |Δmap| / (reference map range), over images
    decision_agreement: float
    n: int


SCORE_SCALE = 0.01
"""Floor of a score's denominator in ``parity``, as a fraction of the largest |reference score|."""


def parity(ref_scores: np.ndarray, ref_maps: np.ndarray, scores: np.ndarray, maps: np.ndarray,
           threshold: float | None) -> Parity:
    """(N,) scores and (N,H,W) maps vs the reference's; agreement 1.0 when there is no threshold.

    A score is compared relative to itself, or to ``SCORE_SCALE`` of the largest |reference score| if
    that is larger: a score that crosses zero (an ensemble's z-normalised score, −10…+1) is held to its
    scale, not to a value that happens to be 0.01 (where float32 noise of 2e-6 reads as 2e-4)."""
    scale = np.abs(ref_scores).max(initial=0.0) * SCORE_SCALE
    rel = np.abs(scores - ref_scores) / np.maximum(np.maximum(np.abs(ref_scores), scale), 1e-12)
    flat = ref_maps.reshape(len(ref_maps), -1)
    # relative to the map's range; a flat map (global detectors broadcast their score: flat to float32
    # rounding, ptp ≈ 2e-7 of the level) relative to its level, i.e. held to the tolerance like a score
    ptp, level = np.ptp(flat, axis=1), np.abs(flat).max(axis=1)
    ranges = np.where(ptp > 1e-4 * level, ptp, np.maximum(level, 1e-12))
    map_diff = np.abs(maps - ref_maps).reshape(len(maps), -1).max(axis=1) / ranges
    agree = 1.0 if threshold is None else float(np.mean((scores > threshold) == (ref_scores > threshold)))
    return Parity(float(rel.max()), float(map_diff.max()), agree, len(scores))


@dataclass(frozen=True)
class Golden:
    frames: np.ndarray  # (N,H,W,3) uint8 BGR at model resolution
    scores: np.ndarray  # (N,) float32, the reference's image scores
    maps: np.ndarray  # (N,H,W) float32, the reference's anomaly maps
    reference: str


def golden(artifact: Artifact) -> Golden | None:
    """The artifact's golden frames, or None if it has none. Shapes are checked against the input spec."""
    block = artifact.metadata.model.get("golden")
    if not block:
        return None
    frames, scores, maps = (artifact.array(block.get(key, name)) for key, name in GOLDEN_FILES.items())
    spec = artifact.metadata.input
    n = len(scores)
    if frames.shape != (n, spec.height, spec.width, 3) or frames.dtype != np.uint8 or maps.shape != (n, spec.height, spec.width):
        raise ArtifactError(f"{artifact.root}: golden frames {frames.shape} {frames.dtype} / maps {maps.shape}: expected "
                            f"({n},{spec.height},{spec.width},3) uint8 / ({n},{spec.height},{spec.width}); re-export")
    return Golden(frames, scores.astype(np.float32), maps.astype(np.float32), str(block.get("reference", "torch")))


def tolerance_for(artifact: Artifact, precision: str) -> Tolerance | None:
    """FP32 for fp32, the recorded tolerance of a variant, or None when none was recorded."""
    if precision == "fp32":
        return FP32
    recorded = artifact.metadata.model.get("variant_params", {}).get(precision, {}).get("verify_tolerance")
    if not recorded:
        return None
    return Tolerance(**{k: float(recorded["tolerance"][k]) for k in ("score_rel", "map", "agreement")})


@dataclass
class VerifyResult:
    """One backend × precision × placement run of the golden frames. status: pass | FAIL | unchecked | skipped."""

    backend: str
    precision: str
    placement: str
    kernel: str | None
    status: str
    parity: Parity | None = None
    tolerance: Tolerance | None = None
    note: str = ""

    @property
    def failed(self) -> bool:
        return self.status == "FAIL"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def row(self) -> dict[str, object]:
        p, t = self.parity, self.tolerance
        return {"backend": self.backend, "precision": self.precision, "placement": self.placement,
                "kernel": self.kernel or "-",
                "max rel Δscore": "-" if p is None else f"{p.max_rel_score_diff:.2e}",
                "max |Δmap|/range": "-" if p is None else f"{p.max_map_diff:.2e}",
                "agree": "-" if p is None else f"{p.decision_agreement:.3f}",
                "tolerance": "-" if t is None else f"{t.score_rel:.1e} / {t.map:.1e} / {t.agreement:.3f}",
                "status": self.status + (f" ({self.note})" if self.note else "")}


def run_golden(inspector, frames: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Scores (N,) and maps (N,H,W) of ``frames``, one frame per batch (fixed-batch artifacts too), without
    the ignore mask: the golden frames prove the model; the mask is an exact host step (docs/drift-and-masks.md).
    On a tiled artifact each golden frame is one tile (model resolution), not cut: cut / stitch are exact host code."""
    results = [inspector.inspect([f], ignore_mask=False, tiled=False) for f in frames]
    return np.concatenate([r.scores for r in results]), np.concatenate([r.maps for r in results])


def verify_inspector(inspector, gold: Golden | None = None) -> VerifyResult:
    """Run the golden frames through ``inspector`` and judge them against the tolerance of its precision."""
    artifact = inspector.artifact
    gold = gold or golden(artifact)
    if gold is None:
        raise ArtifactError(NO_GOLDEN.format(root=artifact.root))
    precision = inspector.backend.precision
    scores, maps = run_golden(inspector, list(gold.frames))
    par = parity(gold.scores, gold.maps, scores, maps, inspector.threshold)
    tol = tolerance_for(artifact, precision)
    note = "" if inspector.threshold is not None else "no threshold: decisions not compared"
    if tol is None:
        status, note = "unchecked", f"no tolerance recorded for {precision}"
    else:
        ok = (par.max_rel_score_diff <= tol.score_rel and par.max_map_diff <= tol.map
              and par.decision_agreement >= tol.agreement)
        status = "pass" if ok else "FAIL"
    return VerifyResult(inspector.backend.name, precision, inspector.placement, inspector.knn_kernel, status, par, tol, note)


def measure_tolerance(artifact: Artifact, precision: str, backend: str = "onnxruntime") -> dict[str, Any] | None:
    """Run a freshly made variant on the golden frames here → the ``verify_tolerance`` entry to record
    (``{"tolerance": {...}, "measured": {...}, "backend": ...}``), or None without golden frames."""
    from .pipeline import Inspector

    gold = golden(artifact)
    if gold is None:
        return None
    with Inspector(artifact, backend, precision=precision, placement="host", knn_kernel="numpy") as inspector:
        scores, maps = run_golden(inspector, list(gold.frames))
        par = parity(gold.scores, gold.maps, scores, maps, inspector.threshold)
    tol = Tolerance(max(MARGIN * par.max_rel_score_diff, SCORE_FLOOR), max(MARGIN * par.max_map_diff, MAP_FLOOR),
                    par.decision_agreement)
    return {"tolerance": asdict(tol), "measured": asdict(par), "backend": f"{backend} cpu"}


def startup_check(inspector, skip: bool = False) -> dict[str, Any]:
    """ad-run's start-up proof on the golden frames → a summary for ``/api/status``.

    Raises ArtifactError (one line, exit 2) when the run is outside tolerance; an artifact without
    golden frames logs one warning and continues; ``skip`` (``--skip-verify``) runs nothing."""
    import logging

    if skip:
        return {"status": "skipped", "note": "--skip-verify"}
    gold = golden(inspector.artifact)
    if gold is None:
        logging.getLogger("anomedge").warning("%s; start-up verification skipped",
                                              NO_GOLDEN.format(root=inspector.artifact.root))
        return {"status": "no golden frames"}
    result = verify_inspector(inspector, gold)
    if result.failed:
        p, t = result.parity, result.tolerance
        raise ArtifactError(
            f"{inspector.artifact.root}: start-up verification failed on {p.n} golden frames ({result.backend} "
            f"{result.precision}, placement {result.placement}): max rel Δscore {p.max_rel_score_diff:.2e} "
            f"(tolerance {t.score_rel:.0e}), map {p.max_map_diff:.2e} ({t.map:.0e}), agreement "
            f"{p.decision_agreement:.3f} ({t.agreement:.3f}); see ad-verify {inspector.artifact.root}, "
            "or pass --skip-verify to inspect anyway")
    return result.to_dict()
