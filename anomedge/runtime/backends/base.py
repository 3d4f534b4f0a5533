"""The backend interface: run the artifact's graph on a batch; checks here, work in ``_infer``.

A backend turns a preprocessed batch (N,3,H,W) float32 into the graph's named outputs: it runs
graphs, nothing else. ``runtime.pipeline`` composes preprocess → backend → head → postprocess around
it; only a backend that is a whole reference pipeline of its own (the PyTorch reference) returns its
four stages from ``stages()``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from typing import Any, Callable, ClassVar, Mapping

import numpy as np

from ...artifact import Artifact
from ...errors import InputError
from ..precisions import check_precision


@dataclass(frozen=True)
class Stages:
    """The pipeline's four callables.

    preprocess: list of frames → (N,3,H,W) float32; infer: batch → {output name: array};
    score: outputs → (N,h,w) float32 patch scores; postprocess: patch scores → ((N,), (N,H,W)).
    """

    preprocess: Callable[[list[np.ndarray]], Any]
    infer: Callable[[Any], dict[str, Any]]
    score: Callable[[dict[str, Any]], Any]
    postprocess: Callable[[Any], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class BackendOptions:
    """Options every backend takes; a backend subclasses this with its own fields.

    threads: CPU threads (None: the library's default; GPU backends have none to set); model_file: the
    ONNX to run (graph placement); precision: a column of ``runtime.precisions.PRECISIONS`` (None: the
    backend's default). The host kNN kernel is the pipeline's choice (``Inspector(knn_kernel=…)``).
    """

    threads: int | None = None
    model_file: str | None = None
    precision: str | None = None

    @classmethod
    def parse(cls, backend: str, options: Mapping[str, Any]) -> "BackendOptions":
        """The options of ``backend``; InputError naming an unknown key (never guessed) or precision."""
        valid = [f.name for f in fields(cls)]
        unknown = [key for key in options if key not in valid]
        if unknown:
            raise InputError(f"backend {backend} has no option '{unknown[0]}'; valid options: {', '.join(valid)}")
        check_precision(backend, options.get("precision"))
        return cls(**options)


class Backend(ABC):
    """Base class of every backend; subclasses set ``name``, ``install_hint``, ``Options`` and hooks."""

    name: ClassVar[str]
    install_hint: ClassVar[str] = ""
    Options: ClassVar[type[BackendOptions]] = BackendOptions

    def __init__(self, artifact: Artifact, device: str = "auto", **options: Any):
        self.artifact = artifact
        self.device = device
        self.options = self.Options.parse(self.name, options)
        self.precision = self.options.precision or "fp32"

    @classmethod
    def check_available(cls) -> None:
        """Raise BackendUnavailable (with ``install_hint``) if the library or device is missing."""

    def __enter__(self) -> "Backend":
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        """Acquire sessions / engines / buffers. Default: nothing to do."""

    def close(self) -> None:
        """Release what ``open`` acquired."""

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Check ``batch`` against the artifact's input spec, then run ``_infer``."""
        spec = self.artifact.metadata.input
        expected = (3, spec.height, spec.width)
        if not isinstance(batch, np.ndarray) or batch.ndim != 4 or batch.shape[1:] != expected:
            got = getattr(batch, "shape", type(batch).__name__)
            raise InputError(f"input batch {got}: expected (N, {', '.join(map(str, expected))}); use runtime.preprocess")
        if batch.dtype != np.float32:
            raise InputError(f"input batch dtype {batch.dtype}: expected float32")
        if not spec.dynamic_batch and batch.shape[0] != 1:
            raise InputError(f"input batch of {batch.shape[0]}: this artifact was exported for batch 1")
        return self._infer(np.ascontiguousarray(batch))

    @abstractmethod
    def _infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run the graph; ``batch`` is already checked."""

    def stages(self) -> Stages | None:
        """None: the pipeline composes the host stages around ``infer``. A backend that runs every
        stage itself (the PyTorch reference, for parity) returns them."""
        return None
