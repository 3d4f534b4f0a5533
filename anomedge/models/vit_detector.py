"""ViT patch features (DINOv2 / MAE / Swin, see ``vit.py``) scored by kNN or by a Mahalanobis distance.

Graph: image (N,3,S,S) → ``features``: the ViT patch grid (N,D,h,w) (``level="patch"``: a heatmap), or
its mean over the grid (N,D,1,1) (``level="image"``: the pooled token, a constant map), then
- ``scoring="knn"``, ``metric="cosine"``: L2-normalised inside the graph, so the host's fused L2 kernel
  gives ‖q − m‖ = √(2 − 2 cos) (monotone in the cosine distance); ``metric="l2"``: raw features.
  Bank = the training features (patch level: a greedy coreset of ``coreset_fraction``).
- ``scoring="mahalanobis"``: one Gaussian shared by all positions, fitted in a PCA subspace of
  ``pca_dim`` dimensions with Ledoit-Wolf shrinkage (+ ``ridge``). The projection *and* the whitening are
  one 1×1 conv inside the graph: z = Lᵀ Pᵀ (x − μ) with L Lᵀ = Σ⁻¹ (Σ in PCA space), so
  ‖z‖ = the Mahalanobis distance and the artifact is scored by the same fused L2 kernel against a
  one-row zero bank — no covariance on the host, and accelerators run the whitening on device.
  ``whiten.npy`` (C',D) and ``whiten_bias.npy`` (C',) carry it for the PyTorch reference.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..artifact import InputSpec
from ..benchmark import fastest_knn_kernel
from ..errors import InputError
from ..scoring.kernels import inverse_cov_factor
from .coreset import greedy_coreset
from .detector import Detector
from .features import extract
from .padim import gaussian_fit
from .vit import ViTSpec, build_vit, spec_for_model

LEVELS = ("patch", "image")
SCORINGS = ("knn", "mahalanobis")
METRICS = ("cosine", "l2")


class ViTGraph(torch.nn.Module):
    """(N,3,S,S) → (N,C,h,w) patch or (N,C,1,1) pooled features, optionally L2-normalised and whitened."""

    def __init__(self, extractor: torch.nn.Module, level: str, normalize: bool,
                 whiten: np.ndarray | None = None, whiten_bias: np.ndarray | None = None):
        super().__init__()
        self.extractor = extractor
        self.pool = level == "image"
        self.normalize = normalize
        self.whiten = whiten is not None
        if self.whiten:
            self.set_whitening(whiten, whiten_bias)

    def set_whitening(self, weight: np.ndarray, bias: np.ndarray) -> None:
        w = torch.from_numpy(np.asarray(weight, np.float32))
        self.register_buffer("whiten_weight", w[:, :, None, None].contiguous(), persistent=False)
        self.register_buffer("whiten_bias", torch.from_numpy(np.asarray(bias, np.float32)), persistent=False)
        self.whiten = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.extractor(x)
        if self.pool:
            f = f.mean(dim=(2, 3), keepdim=True)
        if self.normalize:
            f = F.normalize(f, dim=1, eps=1e-12)
        if self.whiten:
            f = F.conv2d(f, self.whiten_weight, self.whiten_bias)
        return f


@dataclass
class ViTConfig:
    model: str = "vit_small_patch14_dinov2"
    weights: str = "hub"  # hub | none (random init) | PATH (.safetensors / .pth)
    image_size: int = 224
    blocks: list[int] = field(default_factory=lambda: [-1])
    norm: bool = True
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    level: str = "patch"  # patch (heatmap) | image (pooled token)
    scoring: str = "knn"  # knn | mahalanobis
    metric: str = "cosine"  # knn only: cosine | l2
    k: int = 1
    coreset_fraction: float = 0.1  # patch-level kNN bank
    pca_dim: int = 64  # mahalanobis
    shrinkage: str = "ledoit_wolf"
    ridge: float = 1e-6
    reduction: dict[str, Any] | None = None  # default: top 5 % mean (patch), max (image)
    blur_sigma: float | None = None  # default: 4 (patch), 0 (image)
    bank_dtype: str = "float32"
    batch_size: int = 8
    seed: int = 0


class ViTDetector(Detector):
    name = "vit"
    output_names = ("features",)
    config_class = ViTConfig

    def __init__(self, config: ViTConfig | None = None, progress: bool | None = None):
        self.config = cfg = config or ViTConfig()
        for name, allowed in (("level", LEVELS), ("scoring", SCORINGS), ("metric", METRICS)):
            if getattr(cfg, name) not in allowed:
                raise InputError(f"vit: {name} '{getattr(cfg, name)}': expected one of {', '.join(allowed)}")
        for name in ("k", "pca_dim", "batch_size"):
            value = getattr(cfg, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"vit: {name} {value!r}: expected a positive integer")
        if not 0 < cfg.coreset_fraction <= 1:
            raise InputError(f"vit: coreset_fraction {cfg.coreset_fraction}: expected a value in (0, 1]")
        if cfg.bank_dtype not in ("float32", "float16"):
            raise InputError(f"vit: bank_dtype '{cfg.bank_dtype}': expected float32 or float16")
        if cfg.scoring == "mahalanobis" and cfg.k != 1:
            raise InputError("vit: k applies to scoring=knn only; leave k=1 with scoring=mahalanobis")
        self.progress = progress
        blocks = cfg.blocks if isinstance(cfg.blocks, (list, tuple)) else [cfg.blocks]
        self.spec = spec_for_model(cfg.model, blocks=tuple(int(b) for b in blocks), weights=cfg.weights,
                                   image_size=cfg.image_size, norm=bool(cfg.norm),
                                   model_kwargs=dict(cfg.model_kwargs)).with_weights_hash()
        self.normalize = cfg.scoring == "knn" and cfg.metric == "cosine"
        self._graph = ViTGraph(build_vit(self.spec), cfg.level, self.normalize).eval()
        self.bank: np.ndarray | None = None
        self.whiten: tuple[np.ndarray, np.ndarray] | None = None

    def model_block(self) -> dict[str, Any]:
        return {"vit": self.spec.to_dict(), "level": self.config.level, "normalize": self.normalize,
                "whiten": self.config.scoring == "mahalanobis"}

    @classmethod
    def build_graph(cls, model_block: dict[str, Any], artifact=None) -> ViTGraph:
        extractor = build_vit(ViTSpec.from_dict(model_block["vit"]))
        weight = bias = None
        if model_block.get("whiten"):
            if artifact is None:
                raise InputError("vit: a whitened (mahalanobis) graph needs the artifact's whiten.npy")
            weight, bias = artifact.array("whiten.npy"), artifact.array("whiten_bias.npy")
        return ViTGraph(extractor, model_block["level"], model_block["normalize"], weight, bias).eval()

    def graph(self) -> ViTGraph:
        return self._graph

    def input_spec(self) -> InputSpec:
        size = self.config.image_size
        return InputSpec(name="image", height=size, width=size, mean=tuple(self.spec.mean), std=tuple(self.spec.std))

    def fit(self, train: Sequence[Path]) -> "ViTDetector":
        if len(train) == 0:
            raise InputError("no training images: the ViT detector needs at least one good image")
        cfg = self.config
        feats = extract(self._graph, train, self.input_spec(), cfg.batch_size, self.progress)
        n, d, h, w = feats.shape
        self.grid, self.n_train = (h, w), n
        rows = feats.transpose(0, 2, 3, 1).reshape(-1, d)
        self.n_train_rows = len(rows)
        if cfg.scoring == "knn":
            bank = rows
            count = max(1, int(round(len(rows) * cfg.coreset_fraction)))
            if cfg.level == "patch" and count < len(rows):
                bank = rows[greedy_coreset(rows, n=count, seed=cfg.seed)]
            if cfg.k > len(bank):
                raise InputError(f"vit: k {cfg.k} > {len(bank)} bank rows; lower k or raise coreset_fraction")
            self.bank = np.ascontiguousarray(bank, dtype=cfg.bank_dtype)
        else:
            weight, bias = whitening(rows, cfg.pca_dim, cfg.shrinkage, cfg.ridge)
            self.whiten = (weight, bias)
            self._graph.set_whitening(weight, bias)
            self.bank = np.zeros((1, weight.shape[0]), cfg.bank_dtype)
        self.kernel, self.kernel_ms = fastest_knn_kernel(self.bank, h * w, cfg.k)
        return self

    def arrays(self) -> dict[str, np.ndarray]:
        if self.bank is None:
            raise InputError("vit: not fitted: call fit() first")
        out = {"bank.npy": self.bank}
        if self.whiten is not None:
            out.update({"whiten.npy": self.whiten[0], "whiten_bias.npy": self.whiten[1]})
        return out

    def metadata_blocks(self) -> dict[str, Any]:
        if self.bank is None:
            raise InputError("vit: not fitted: call fit() first")
        cfg = self.config
        h, w = self.grid
        patch = cfg.level == "patch"
        reduction = cfg.reduction or ({"name": "top_fraction_mean", "fraction": 0.05} if patch else {"name": "max"})
        sigma = cfg.blur_sigma if cfg.blur_sigma is not None else (4.0 if patch else 0.0)
        metric = "mahalanobis (whitened in graph, zero bank)" if cfg.scoring == "mahalanobis" else cfg.metric
        return {
            "input": self.input_spec(),
            "model": {**self.model_block(), "fit": {**asdict(cfg), "n_train": self.n_train,
                                                    "n_train_rows": self.n_train_rows}},
            "outputs": {"names": list(self.output_names), "features": {"shape": ["N", int(self.bank.shape[1]), h, w],
                        "stride": cfg.image_size // h}},
            "scoring": {"kind": "knn", "k": cfg.k, "metric": metric, "placement": "host",
                        "bank_rows": int(len(self.bank)), "bank_dtype": cfg.bank_dtype, "kernel": self.kernel,
                        "kernel_race_ms": {k: round(v, 3) for k, v in self.kernel_ms.items()}},
            "postprocess": {"blur_sigma": sigma, "reduction": reduction},
        }


def whitening(rows: np.ndarray, pca_dim: int, shrinkage: str = "ledoit_wolf",
              ridge: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """(M,D) samples → (W (C',D), b (C',)) float32 with ‖W x + b‖² = (x − μ)ᵀ P Σ⁻¹ Pᵀ (x − μ):
    P (D,C') the top-C' principal axes, Σ the (shrunk) covariance of the projected samples."""
    m, d = rows.shape
    if pca_dim > d:
        raise InputError(f"vit: pca_dim {pca_dim} > feature dimension {d}; choose at most {d}")
    if m < 2:
        raise InputError(f"vit: {m} training feature(s): the Mahalanobis fit needs at least 2")
    x = torch.from_numpy(np.ascontiguousarray(rows)).to(torch.float64)
    mu = x.mean(0)
    xc = x - mu
    cov = xc.T @ xc / max(m - 1, 1)
    _, vecs = torch.linalg.eigh(cov)  # ascending eigenvalues
    p = vecs[:, -pca_dim:].flip(1)  # (D,C') top axes first
    y = (xc @ p)[None]  # (1,M,C')
    _, sigma = gaussian_fit(y, shrinkage, ridge)
    factor = inverse_cov_factor(sigma.numpy(), dtype=np.float64)[0]  # (C',C') L, L Lᵀ = Σ⁻¹
    weight = factor.T @ p.numpy().T  # (C',D) = Lᵀ Pᵀ
    bias = -weight @ mu.numpy()
    return weight.astype(np.float32), bias.astype(np.float32)
