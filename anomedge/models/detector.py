"""The detector interface (workstation side) and the registry of detectors.

A detector is fitted on good images and then described by three things that go into the artifact:
``graph()`` — a torch module image (N,3,H,W) → named outputs, exported to ``model.onnx``;
``arrays()`` — the fitted state the host scoring head needs (``bank.npy``, ``mean.npy`` …);
``metadata_blocks()`` — the ``model`` / ``scoring`` / ``postprocess`` / ``outputs`` blocks.
``build_graph(model_block)`` rebuilds the same graph from metadata alone: that is how the PyTorch
reference backend runs an artifact without any pickled object.
"""

from __future__ import annotations

import dataclasses
import importlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np

from ..errors import InputError


class Detector(ABC):
    name: ClassVar[str]
    output_names: ClassVar[tuple[str, ...]]
    config_class: ClassVar[type]

    @classmethod
    def from_params(cls, params: dict[str, Any], progress: bool | None = None) -> "Detector":
        """Build from ``{config field: value}``; unknown keys are an InputError listing the valid ones."""
        valid = {f.name for f in dataclasses.fields(cls.config_class)}
        unknown = sorted(set(params) - valid)
        if unknown:
            raise InputError(f"{cls.name}: unknown parameter(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}")
        return cls(cls.config_class(**params), progress=progress)

    @abstractmethod
    def fit(self, train: Sequence[Path]) -> "Detector":
        """Fit on good images (file paths)."""

    @abstractmethod
    def graph(self):
        """The torch module to export: (N,3,H,W) normalised float32 → outputs in ``output_names`` order."""

    @abstractmethod
    def arrays(self) -> dict[str, np.ndarray]:
        """Fitted arrays, by artifact file name."""

    @abstractmethod
    def metadata_blocks(self) -> dict[str, Any]:
        """{"model": …, "scoring": …, "postprocess": …, "input": InputSpec, "outputs": …}."""

    def write_files(self, out: Path) -> list[str]:
        """Write extra artifact files (e.g. trained weights as ``weights.safetensors``) into ``out``;
        return their names so they are hashed. Default: none."""
        return []

    def write_training_record(self, out: Path) -> None:
        """Write what a person reads about the fit (e.g. ``loss_curve.png``) into ``out``. Not hashed and
        never read by the runtime. Default: nothing."""

    @classmethod
    @abstractmethod
    def build_graph(cls, model_block: dict[str, Any], artifact=None):
        """Rebuild ``graph()`` from the artifact's ``model`` block — plus, for trained detectors, the
        weights file the ``artifact`` carries (loaded without pickle)."""


# name → "module:Class"; modules import torch, so they are loaded only when asked for.
DETECTORS: dict[str, str] = {
    "patchcore": "anomedge.models.patchcore:PatchCore",
    "padim": "anomedge.models.padim:Padim",
    "vit": "anomedge.models.vit_detector:ViTDetector",
    "global_knn": "anomedge.models.baseline:GlobalKnn",
    "kmeans": "anomedge.models.baseline:KMeansBaseline",
    "autoencoder": "anomedge.models.autoencoder:Autoencoder",
    "mae": "anomedge.models.mae:MaskedAutoencoder",
    "simplenet": "anomedge.models.simplenet:SimpleNet",
    "ensemble": "anomedge.models.ensemble:Ensemble",
    "teacher_student": "anomedge.models.teacher_student:TeacherStudent",
    "synthetic_seg": "anomedge.models.synthetic_seg:SyntheticSeg",
}


DEFAULT_DETECTOR = "ensemble"
"""``ad-export`` / ``ad-demo`` without ``--detector``: the best ELPV row of the 5-split protocol within
the edge budget (p50 ≤ 2× PatchCore's, artifact ≤ 50 MB; docs/ensemble.md)."""


def get_detector(name: str) -> type[Detector]:
    if name not in DETECTORS:
        raise InputError(f"unknown detector '{name}'; choose one of: {', '.join(DETECTORS)}")
    module, cls = DETECTORS[name].split(":")
    return getattr(importlib.import_module(module), cls)
