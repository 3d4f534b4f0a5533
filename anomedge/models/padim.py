"""PaDiM (Defard et al., 2021): a Gaussian per patch position, Mahalanobis distance at test time.

Graph: image (N,3,H,W) → ``features`` (N,C,h,w): the backbone stages (bilinearly upsampled to the
finest stage's grid and concatenated, D = ΣCᵢ), then a seeded random subset of C of the D channels
selected *inside* the graph (``index_select`` → ONNX Gather, so the output is already reduced), then
optionally averaged over ``grid_pool``×``grid_pool`` cells (a coarser grid: fewer positions, a smaller
artifact).
Fit: per position p, the sufficient statistics of the good images' features (count, mean μₚ, scatter,
two higher moments; ``gaussian_stats``) in float64, then the covariance Σₚ (C,C) with Ledoit-Wolf
shrinkage (closed form, vectorised over positions) and/or a ridge ε·I — from the statistics, so that
``ad-update`` (anomedge.update) merging new images gives exactly what a refit on the union gives.
Artifact: ``mean.npy`` (h·w, C) float32 and ``factor.npy`` (h·w, C, C) with L Lᵀ = Σₚ⁻¹, float32 or
float16 (``factor_dtype``); with ``update_stats`` (default) also ``stats.npy`` (h·w, K) float64, the packed
statistics (``model.stats``; never read by the runtime).
Score: the existing ``mahalanobis`` head, ‖Lᵀ(x − μ)‖ per position.
Size: h·w·C²·bytes — 224 px, stride 8 → 784·100²·4 B = 31 MB (float32); float16 or ``grid_pool=2``
divide it by 2 and 4.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..artifact import InputSpec
from ..errors import InputError
from ..scoring.kernels import inverse_cov_factor
from .augment import parse_augment
from .backbones import BackboneSpec, build_backbone
from .detector import Detector
from .features import extract
from .gaussian_stats import LAYOUT, STATS_FILE, GaussianStats, concat, covariance, from_samples, pack

SHRINKAGES = ("ledoit_wolf", "none")
FACTOR_DTYPES = ("float32", "float16")


class PadimFeatures(torch.nn.Module):
    """Normalised image (N,3,H,W) → stage features at the finest stride, channel subset, pooled grid (N,C,h,w)."""

    def __init__(self, extractor: torch.nn.Module, channel_index: Sequence[int] | None, grid_pool: int = 1):
        super().__init__()
        self.extractor = extractor
        self.grid_pool = int(grid_pool)
        index = torch.as_tensor(list(channel_index) if channel_index is not None else [], dtype=torch.int64)
        self.register_buffer("channel_index", index, persistent=False)
        self.select = channel_index is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.combine(self.extractor(x))

    def combine(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """The stage maps (finest first) → (N,C,h,w); ``extractor`` may be None when only this is used
        (the one-pass ensemble feeds it a shared backbone's maps)."""
        size = maps[0].shape[-2:]
        maps = [maps[0]] + [F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps[1:]]
        feats = torch.cat(maps, dim=1)
        if self.select:
            feats = torch.index_select(feats, 1, self.channel_index)
        if self.grid_pool > 1:
            feats = F.avg_pool2d(feats, self.grid_pool, stride=self.grid_pool)
        return feats


def channel_subset(total: int, count: int | None, seed: int) -> list[int] | None:
    """Sorted seeded random subset of ``count`` of ``total`` channels; None when all are kept."""
    if count is None or count >= total:
        return None
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(total, size=count, replace=False))


def ledoit_wolf(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(P,N,C) samples per position → (mean (P,C), shrunk covariance (P,C,C), shrinkage (P,)), float64.

    The closed form of Ledoit & Wolf (2004) as in ``sklearn.covariance.LedoitWolf`` (biased empirical
    covariance S = XᵀX/N of the centred X, target μ·I with μ = tr S / C), vectorised over positions:
    δ = (‖S‖²_F − 2μ tr S + Cμ²)/C, β = (Σₙ‖xₙ‖⁴/N − ‖S‖²_F)/(C N), shrinkage = min(β, δ)/δ.
    """
    x = x.to(torch.float64)
    p, n, c = x.shape
    mean = x.mean(dim=1)
    xc = x - mean[:, None, :]
    s = torch.bmm(xc.transpose(1, 2), xc) / n
    trace = torch.diagonal(s, dim1=1, dim2=2).sum(1)
    mu = trace / c
    s_sq = (s * s).sum((1, 2))
    delta = (s_sq - 2.0 * mu * trace + c * mu * mu) / c
    beta = ((xc * xc).sum(2).square().sum(1) / n - s_sq) / (c * n)
    beta = torch.minimum(beta, delta)
    shrink = torch.where(delta > 0, beta / torch.where(delta > 0, delta, torch.ones_like(delta)), torch.zeros_like(delta))
    if c == 1:
        shrink = torch.zeros_like(shrink)
    cov = (1.0 - shrink)[:, None, None] * s
    cov = cov + (shrink * mu)[:, None, None] * torch.eye(c, dtype=torch.float64)
    return mean, cov, shrink


def gaussian_fit(x: torch.Tensor, shrinkage: str = "ledoit_wolf", ridge: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """(P,N,C) samples → (mean (P,C), covariance (P,C,C)) float64.

    ``shrinkage="ledoit_wolf"``: the Ledoit-Wolf shrunk covariance; ``"none"``: the unbiased sample
    covariance (N − 1), as the PaDiM paper. ``ridge`` ε is then added to the diagonal (the paper: 0.01).
    """
    if shrinkage not in SHRINKAGES:
        raise InputError(f"shrinkage '{shrinkage}': expected one of {', '.join(SHRINKAGES)}")
    if not ridge >= 0:
        raise InputError(f"ridge {ridge}: expected a value >= 0")
    p, n, c = x.shape
    if shrinkage == "ledoit_wolf":
        mean, cov, _ = ledoit_wolf(x)
    else:
        if n < 2:
            raise InputError(f"{n} training image(s): the sample covariance needs at least 2; use shrinkage=ledoit_wolf")
        x = x.to(torch.float64)
        mean = x.mean(dim=1)
        xc = x - mean[:, None, :]
        cov = torch.bmm(xc.transpose(1, 2), xc) / (n - 1)
    if ridge > 0:
        cov = cov + ridge * torch.eye(c, dtype=torch.float64)
    return mean, cov


def gaussian_arrays(stats: GaussianStats, shrinkage: str, ridge: float, factor_dtype: str,
                    chunk: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Statistics → the artifact's ``mean.npy`` (P,C) float32 and ``factor.npy`` (P,C,C) L with L Lᵀ = Σ⁻¹
    (``factor_dtype``), Σ from ``gaussian_stats.covariance`` — the one path of the fit and of ad-update."""
    factors = []
    for start in range(0, stats.positions, chunk):
        part = GaussianStats(stats.count, *(getattr(stats, k)[start:start + chunk] for k in ("mean", "m2", "t", "q")))
        factors.append(inverse_cov_factor(covariance(part, shrinkage, ridge), dtype=np.float64))
    factor = np.concatenate(factors)
    out = np.ascontiguousarray(factor, dtype=factor_dtype)
    if not np.isfinite(out).all():
        raise InputError(f"factor_dtype {factor_dtype}: the inverse-covariance factor overflows it "
                         f"(max |L| = {np.abs(factor).max():.3g}); use float32 or a larger ridge")
    return np.ascontiguousarray(stats.mean, dtype=np.float32), out


def stats_block(count: int) -> dict[str, Any]:
    """The ``model.stats`` entry naming the sufficient-statistics file (read by ad-update only)."""
    return {"file": STATS_FILE, "count": int(count), "layout": list(LAYOUT), "dtype": "float64"}


@dataclass
class PadimConfig:
    backbone: dict[str, Any] = field(default_factory=lambda: BackboneSpec().to_dict())
    image_size: int = 224
    n_channels: int | None = 100  # random subset of the D = 152 stage channels; None: all
    # average the feature grid over grid_pool × grid_pool cells inside the graph. Measured (224 px, top-5 %
    # reduction, benchmarks/detector_table.py; AUROC mono / poly / synthetic brick): 1 (28×28) → 0.939 /
    # 0.896 / 0.975, 33.0 MB; 2 (14×14) → 0.939 / 0.900 / 0.989, 10.3 MB; 4 (7×7) → see the README table.
    grid_pool: int = 2
    # float16 halves the factor at no AUROC cost (0.939 / 0.900 both, 6.6 vs 10.3 MB) but widening it
    # costs host time: float32 by default, float16 where memory binds (Jetson).
    shrinkage: str = "ledoit_wolf"  # or "none" (sample covariance, N − 1)
    ridge: float = 0.01  # ε·I added to every covariance
    factor_dtype: str = "float32"
    # image score = mean of the top 5 % position scores; measured vs the max: mono 0.929 → 0.939,
    # poly 0.896 → 0.900, synthetic brick 0.983 → 0.989 (14×14 grid).
    reduction: dict[str, Any] = field(default_factory=lambda: {"name": "top_fraction_mean", "fraction": 0.05})
    blur_sigma: float = 4.0
    batch_size: int = 16
    position_chunk: int = 64  # positions per covariance/factor chunk (memory bound of the fit)
    augment: str = "none"  # or a comma list of hflip, vflip, rot180: transformed training copies (models/augment.py)
    seed: int = 0
    # ship the float64 sufficient statistics (stats.npy, models.gaussian_stats) so that ad-update can add
    # good images exactly; never read by the runtime. 14×14 grid, 100 channels: 8.2 MB.
    update_stats: bool = True


class Padim(Detector):
    name = "padim"
    output_names = ("features",)
    config_class = PadimConfig

    def __init__(self, config: PadimConfig | None = None, progress: bool | None = None):
        self.config = cfg = config or PadimConfig()
        if cfg.n_channels is not None and (isinstance(cfg.n_channels, bool) or not isinstance(cfg.n_channels, int)
                                           or cfg.n_channels < 1):
            raise InputError(f"n_channels {cfg.n_channels!r}: expected a positive integer or None (all channels)")
        if isinstance(cfg.grid_pool, bool) or not isinstance(cfg.grid_pool, int) or cfg.grid_pool < 1:
            raise InputError(f"grid_pool {cfg.grid_pool!r}: expected a positive integer (1 = full grid)")
        if cfg.shrinkage not in SHRINKAGES:
            raise InputError(f"shrinkage '{cfg.shrinkage}': expected one of {', '.join(SHRINKAGES)}")
        if not isinstance(cfg.ridge, (int, float)) or not cfg.ridge >= 0:
            raise InputError(f"ridge {cfg.ridge!r}: expected a number >= 0")
        if cfg.factor_dtype not in FACTOR_DTYPES:
            raise InputError(f"factor_dtype '{cfg.factor_dtype}': expected one of {', '.join(FACTOR_DTYPES)}")
        if cfg.shrinkage == "none" and cfg.ridge == 0:
            raise InputError("shrinkage none with ridge 0: the covariance may be singular; set ridge > 0 "
                             "(PaDiM uses 0.01) or shrinkage=ledoit_wolf")
        self.views = parse_augment(cfg.augment)
        self.progress = progress
        self.spec = BackboneSpec.from_dict(cfg.backbone).with_weights_hash()
        extractor = build_backbone(self.spec)
        total = sum(extractor.channels)
        if cfg.n_channels is not None and cfg.n_channels > total:
            raise InputError(f"n_channels {cfg.n_channels}: the backbone stages give only {total} channels; "
                             f"choose at most {total} or None")
        self.channel_index = channel_subset(total, cfg.n_channels, cfg.seed)
        self.total_channels = total
        self._graph = PadimFeatures(extractor, self.channel_index, cfg.grid_pool).eval()
        self.mean: np.ndarray | None = None
        self.factor: np.ndarray | None = None

    def model_block(self) -> dict[str, Any]:
        return {"backbone": self.spec.to_dict(), "channel_index": self.channel_index,
                "grid_pool": self.config.grid_pool}

    @classmethod
    def build_graph(cls, model_block: dict[str, Any], artifact=None) -> PadimFeatures:
        extractor = build_backbone(BackboneSpec.from_dict(model_block["backbone"]))
        return PadimFeatures(extractor, model_block["channel_index"], model_block["grid_pool"]).eval()

    def graph(self) -> PadimFeatures:
        return self._graph

    def input_spec(self) -> InputSpec:
        size = self.config.image_size
        return InputSpec(name="image", height=size, width=size, mean=tuple(self.spec.mean), std=tuple(self.spec.std))

    def fit(self, train: Sequence[Path]) -> "Padim":
        if len(train) == 0:
            raise InputError("no training images: PaDiM needs at least one good image")
        cfg = self.config
        return self.fit_features(extract(self._graph, train, self.input_spec(), cfg.batch_size, self.progress,
                                         self.views), n_images=len(train))

    def fit_features(self, feats: np.ndarray, n_images: int | None = None) -> "Padim":
        """Fit on the graph's output for the good images (and their augmented views), ``feats`` (N,C,h,w)
        float32; ``n_images``: how many images they came from (default N)."""
        cfg = self.config
        n, c, h, w = feats.shape
        self.grid = (h, w)
        x = feats.reshape(n, c, h * w).transpose(2, 0, 1)  # (P,N,C) view
        self.stats = concat([from_samples(x[start:start + cfg.position_chunk])
                             for start in range(0, h * w, cfg.position_chunk)])
        self.mean, self.factor = gaussian_arrays(self.stats, cfg.shrinkage, cfg.ridge, cfg.factor_dtype,
                                                 cfg.position_chunk)
        self.n_train, self.n_images = n, n_images or n
        return self

    def arrays(self) -> dict[str, np.ndarray]:
        if self.mean is None:
            raise InputError("PaDiM is not fitted: call fit() first")
        extra = {STATS_FILE: pack(self.stats)} if self.config.update_stats else {}
        return {"mean.npy": self.mean, "factor.npy": self.factor, **extra}

    def metadata_blocks(self) -> dict[str, Any]:
        if self.mean is None:
            raise InputError("PaDiM is not fitted: call fit() first")
        h, w = self.grid
        cfg = self.config
        c = int(self.mean.shape[1])
        return {
            "input": self.input_spec(),
            "model": {**self.model_block(), "fit": {**asdict(cfg), "n_train": self.n_train, "n_images": self.n_images,
                                                    "total_channels": self.total_channels},
                      **({"stats": stats_block(self.stats.count)} if cfg.update_stats else {})},
            "outputs": {"names": list(self.output_names), "features": {"shape": ["N", c, h, w],
                        "stride": cfg.image_size // h}},
            "scoring": {"kind": "mahalanobis", "placement": "host", "positions": h * w, "channels": c,
                        "factor_dtype": cfg.factor_dtype, "shrinkage": cfg.shrinkage, "ridge": cfg.ridge},
            "postprocess": {"blur_sigma": cfg.blur_sigma, "reduction": cfg.reduction},
        }
