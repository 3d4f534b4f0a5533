"""Per-detector state updates for ``ad-update``: one table, detector name → Updater (numpy; no torch here).

An Updater is built from a verified artifact, is fed the ``features`` output (B,C,h,w) of batches of new
good images (``add``), and ``finish`` returns an ``Update``: the arrays to write, the keys to merge into the
``model.fit`` / ``model`` / ``scoring`` blocks, and a summary for the history and the CLI.

- ``padim``: the float64 sufficient statistics in ``stats.npy`` are merged exactly (``gaussian_stats.combine``)
  and ``mean.npy`` / ``factor.npy`` recomputed from them (``padim.gaussian_arrays``) — what a refit on the
  union computes, Ledoit-Wolf shrinkage included.
- ``patchcore``: the bank grows by the greedy k-center continued from it (``coreset_extend``), bounded by
  ``max_bank_rows`` (default: coreset_fraction × all training patches, i.e. the size a refit would give).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..errors import InputError
from ..models import gaussian_stats as gs
from ..models.coreset_extend import FarPatches, bank_spacing, extend


@dataclass
class Update:
    arrays: dict[str, np.ndarray]
    fit: dict[str, Any] = field(default_factory=dict)  # merged into model.fit
    model: dict[str, Any] = field(default_factory=dict)  # merged into model
    scoring: dict[str, Any] = field(default_factory=dict)  # merged into scoring
    summary: dict[str, Any] = field(default_factory=dict)  # history entry + CLI line
    notes: list[str] = field(default_factory=list)


class Updater:
    name: ClassVar[str]

    def __init__(self, artifact):
        self.artifact = artifact
        self.meta = artifact.metadata
        self.images = 0

    def add(self, features: np.ndarray) -> None:
        """(B,C,h,w) float32 ``features`` of B new good images."""
        if features.ndim != 4:
            raise InputError(f"features {features.shape}: expected (B,C,h,w)")
        self.images += len(features)
        self._add(features)

    def _add(self, features: np.ndarray) -> None:
        raise NotImplementedError

    def check_limit(self, max_bank_rows: int | None) -> None:
        """Refuse a bank bound before any image is read (InputError)."""
        if max_bank_rows is not None:
            raise InputError(f"--max-bank-rows applies to patchcore (a bank); {self.name} has a fixed-size state")

    def finish(self, max_bank_rows: int | None = None) -> Update:
        raise NotImplementedError


class PadimUpdater(Updater):
    name = "padim"

    def __init__(self, artifact):
        super().__init__(artifact)
        block = self.meta.model.get("stats")
        if not block:
            raise InputError(f"{artifact.root}: this PaDiM artifact carries no sufficient statistics ({gs.STATS_FILE}; "
                             "exported before ad-update or with update_stats=false): re-export it once with ad-export, "
                             "later updates are exact and incremental")
        mean = artifact.array("mean.npy")
        self.before = int(block["count"])
        self.stats = gs.unpack(artifact.array(block["file"]), int(mean.shape[1]), self.before)
        if self.stats.positions != mean.shape[0]:
            raise InputError(f"{artifact.root / block['file']}: {self.stats.positions} positions, mean.npy has "
                             f"{mean.shape[0]}; re-export the artifact")
        fit = self.meta.model.get("fit", {})
        self.shrinkage = self.meta.scoring.get("shrinkage", fit.get("shrinkage", "ledoit_wolf"))
        self.ridge = float(self.meta.scoring.get("ridge", fit.get("ridge", 0.01)))
        self.factor_dtype = self.meta.scoring.get("factor_dtype", "float32")
        self.chunk = int(fit.get("position_chunk", 64))

    def _add(self, features: np.ndarray) -> None:
        b, c, h, w = features.shape
        if (h * w, c) != (self.stats.positions, self.stats.channels):
            raise InputError(f"features {features.shape}: expected {self.stats.channels} channels at "
                             f"{self.stats.positions} positions (the artifact's)")
        self.stats = gs.combine(self.stats, gs.from_samples(features.reshape(b, c, h * w).transpose(2, 0, 1)))

    def finish(self, max_bank_rows: int | None = None) -> Update:
        from ..models.padim import gaussian_arrays, stats_block

        self.check_limit(max_bank_rows)
        mean, factor = gaussian_arrays(self.stats, self.shrinkage, self.ridge, self.factor_dtype, self.chunk)
        after = self.stats.count
        return Update(arrays={"mean.npy": mean, "factor.npy": factor, gs.STATS_FILE: gs.pack(self.stats)},
                      fit={"n_train": after}, model={"stats": stats_block(after)},
                      summary={"n_train": [self.before, after]})


class PatchCoreUpdater(Updater):
    name = "patchcore"

    def __init__(self, artifact):
        super().__init__(artifact)
        self.bank = artifact.array("bank.npy")
        fit = self.meta.model.get("fit", {})
        self.notes: list[str] = []
        radius = fit.get("coverage_radius")
        if radius is None:
            radius = bank_spacing(self.bank)
            self.notes.append(f"the artifact records no coverage radius (exported before ad-update): using the bank's "
                              f"smallest row spacing {radius:.4g}, which adds fewer rows; re-export once to record it")
        self.radius = float(radius)
        self.fraction = float(fit.get("coreset_fraction", 0.01))
        self.patches_before = int(fit.get("n_train_patches", 0))
        self.far = FarPatches(self.bank, self.radius)

    def _add(self, features: np.ndarray) -> None:
        b, d, h, w = features.shape
        if d != self.bank.shape[1]:
            raise InputError(f"features {features.shape}: {d} channels, the bank has {self.bank.shape[1]}")
        self.far.add(features.transpose(0, 2, 3, 1).reshape(-1, d))

    def check_limit(self, max_bank_rows: int | None) -> None:
        if max_bank_rows is not None and max_bank_rows < len(self.bank):
            raise InputError(f"--max-bank-rows {max_bank_rows}: the bank already has {len(self.bank)} rows and an "
                             f"update only adds; pass at least {len(self.bank)}")

    def default_limit(self) -> int:
        """The bank size a refit on old + new images would have (coreset_fraction × all patches), ≥ today's."""
        total = self.patches_before + self.far.seen
        return max(len(self.bank), int(round(total * self.fraction)))

    def finish(self, max_bank_rows: int | None = None) -> Update:
        from ..benchmark import fastest_knn_kernel

        rows = len(self.bank)
        self.check_limit(max_bank_rows)
        limit = self.default_limit() if max_bank_rows is None else int(max_bank_rows)
        cands, dist2 = self.far.candidates()
        ext = extend(cands, dist2, self.radius, limit - rows)
        bank = np.ascontiguousarray(np.concatenate([self.bank, cands[ext.picks].astype(self.bank.dtype)]))
        radius = max(self.radius, ext.residual)
        notes = list(self.notes)
        if ext.residual > self.radius:
            notes.append(f"the bank limit {limit} stopped the coreset before it covered every new patch: the farthest "
                         f"lies {ext.residual:.4g} from the bank (coverage radius {self.radius:.4g}); raise "
                         "--max-bank-rows or refit with ad-export")
        grid = self.meta.outputs.get("features", {}).get("shape", [None, None, 28, 28])
        queries = int(grid[2] * grid[3]) if all(isinstance(v, int) for v in grid[2:4]) else 784
        k = int(self.meta.scoring.get("k", 1))
        kernel, times = fastest_knn_kernel(bank, queries, k)
        return Update(arrays={"bank.npy": bank},
                      fit={"n_train_patches": self.patches_before + self.far.seen, "coverage_radius": radius},
                      scoring={"bank_rows": int(len(bank)), "kernel": kernel,
                               "kernel_race_ms": {n: round(v, 3) for n, v in times.items()}},
                      summary={"bank_rows": [rows, int(len(bank))], "max_bank_rows": limit,
                               "new_patches": self.far.seen, "far_patches": self.far.kept,
                               "coverage_radius": self.radius, "residual": ext.residual},
                      notes=notes)


UPDATERS: dict[str, type[Updater]] = {cls.name: cls for cls in (PadimUpdater, PatchCoreUpdater)}


def updater_for(artifact) -> Updater:
    """The Updater of ``artifact``'s detector; InputError for detectors that cannot be updated."""
    name = artifact.metadata.detector
    if name not in UPDATERS:
        raise InputError(f"{artifact.root}: detector '{name}': ad-update supports {', '.join(UPDATERS)}; "
                         "refit with ad-export")
    return UPDATERS[name](artifact)
