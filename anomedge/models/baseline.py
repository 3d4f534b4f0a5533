"""Global baselines: one pooled backbone feature per image, scored by the existing ``knn`` head.

Graph (both): image (N,3,H,W) → ``features`` (N,D,1,1): each chosen backbone stage averaged over the
whole grid (global average pooling), concatenated (D = ΣCᵢ). One "patch" per image, so the anomaly
map is constant and the image score is that patch's score.
- ``global_knn``: bank = every training image's feature (M = N train); score = mean distance to the k
  nearest training images.
- ``kmeans``: bank = the ``n_clusters`` k-means centres of the training features (scikit-learn,
  seeded); score = distance to the nearest centre.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..artifact import InputSpec
from ..benchmark import fastest_knn_kernel
from ..errors import InputError
from .backbones import BackboneSpec, build_backbone
from .detector import Detector
from .features import extract


class PooledFeatures(torch.nn.Module):
    """Normalised image (N,3,H,W) → concatenated globally averaged stage features (N,D,1,1)."""

    def __init__(self, extractor: torch.nn.Module):
        super().__init__()
        self.extractor = extractor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([m.mean(dim=(2, 3), keepdim=True) for m in self.extractor(x)], dim=1)


def _default_backbone() -> dict[str, Any]:
    # Pooled global features: the deeper stages carry more of the image's content than the stride-8 one.
    # No border padding: it only matters for maps (these detectors give one score per image) and costs FLOPs.
    return BackboneSpec(stages=(4, 6), border_pad=0).to_dict()


@dataclass
class GlobalConfig:
    backbone: dict[str, Any] = field(default_factory=_default_backbone)
    image_size: int = 224
    bank_dtype: str = "float32"
    batch_size: int = 16
    seed: int = 0


@dataclass
class GlobalKnnConfig(GlobalConfig):
    # neighbours averaged. Measured (benchmarks/detector_table.py, AUROC mono / poly / synthetic brick):
    # k=1 0.902 / 0.862 / 0.906, k=5 0.906 / 0.861 / 0.892 — a wash; 1 is the simpler, faster default.
    k: int = 1


@dataclass
class KMeansConfig(GlobalConfig):
    # centres. Measured (AUROC mono / poly / synthetic brick): 8 → 0.868 / 0.818 / 0.890,
    # 16 → 0.891 / 0.830 / 0.901. Needs at least n_clusters good images.
    n_clusters: int = 16


class _GlobalBaseline(Detector):
    output_names = ("features",)
    config_class = GlobalConfig

    def __init__(self, config: GlobalConfig | None = None, progress: bool | None = None):
        self.config = cfg = config or self.config_class()
        for name in ("k", "n_clusters", "image_size", "batch_size"):
            value = getattr(cfg, name, 1)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{self.name}: {name} {value!r}: expected a positive integer")
        if cfg.bank_dtype not in ("float32", "float16"):
            raise InputError(f"{self.name}: bank_dtype '{cfg.bank_dtype}': expected float32 or float16")
        self.progress = progress
        self.spec = BackboneSpec.from_dict(cfg.backbone).with_weights_hash()
        self._graph = self.build_graph(self.model_block())
        self.bank: np.ndarray | None = None

    def model_block(self) -> dict[str, Any]:
        return {"backbone": self.spec.to_dict(), "pooling": "mean"}

    @classmethod
    def build_graph(cls, model_block: dict[str, Any], artifact=None) -> PooledFeatures:
        return PooledFeatures(build_backbone(BackboneSpec.from_dict(model_block["backbone"]))).eval()

    def graph(self) -> PooledFeatures:
        return self._graph

    def input_spec(self) -> InputSpec:
        size = self.config.image_size
        return InputSpec(name="image", height=size, width=size, mean=tuple(self.spec.mean), std=tuple(self.spec.std))

    def fit(self, train: Sequence[Path]) -> "_GlobalBaseline":
        if len(train) == 0:
            raise InputError(f"no training images: {self.name} needs at least one good image")
        feats = extract(self._graph, train, self.input_spec(), self.config.batch_size, self.progress)
        self.n_train = len(feats)
        bank = self._bank(feats[:, :, 0, 0].astype(np.float64))
        self.bank = np.ascontiguousarray(bank, dtype=self.config.bank_dtype)
        self.kernel, self.kernel_ms = fastest_knn_kernel(self.bank, 1, self.k)
        return self

    @property
    def k(self) -> int:
        return 1

    def _bank(self, feats: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def arrays(self) -> dict[str, np.ndarray]:
        if self.bank is None:
            raise InputError(f"{self.name} is not fitted: call fit() first")
        return {"bank.npy": self.bank}

    def metadata_blocks(self) -> dict[str, Any]:
        if self.bank is None:
            raise InputError(f"{self.name} is not fitted: call fit() first")
        cfg = self.config
        return {
            "input": self.input_spec(),
            "model": {**self.model_block(), "fit": {**asdict(cfg), "n_train": self.n_train}},
            "outputs": {"names": list(self.output_names),
                        "features": {"shape": ["N", int(self.bank.shape[1]), 1, 1], "stride": cfg.image_size}},
            "scoring": {"kind": "knn", "k": self.k, "metric": "l2", "placement": "host",
                        "bank_rows": int(len(self.bank)), "bank_dtype": cfg.bank_dtype, "kernel": self.kernel,
                        "kernel_race_ms": {k: round(v, 3) for k, v in self.kernel_ms.items()}},
            "postprocess": {"blur_sigma": 0.0, "reduction": {"name": "max"}},
        }


class GlobalKnn(_GlobalBaseline):
    """Pooled feature + kNN over all training images (k configurable)."""

    name = "global_knn"
    config_class = GlobalKnnConfig

    @property
    def k(self) -> int:
        return self.config.k

    def _bank(self, feats: np.ndarray) -> np.ndarray:
        if self.config.k > len(feats):
            raise InputError(f"global_knn: k {self.config.k} > {len(feats)} training images; lower k")
        return feats


class KMeansBaseline(_GlobalBaseline):
    """Pooled feature + distance to the nearest of ``n_clusters`` k-means centres."""

    name = "kmeans"
    config_class = KMeansConfig

    def _bank(self, feats: np.ndarray) -> np.ndarray:
        from sklearn.cluster import KMeans

        if self.config.n_clusters > len(feats):
            raise InputError(f"kmeans: n_clusters {self.config.n_clusters} > {len(feats)} training images; "
                             "lower n_clusters")
        km = KMeans(n_clusters=self.config.n_clusters, n_init=10, random_state=self.config.seed).fit(feats)
        return km.cluster_centers_
