"""SimpleNet (Liu et al., CVPR 2023): frozen features → learned adaptor → discriminator, trained on good
images only, with Gaussian noise in the adapted feature space as the simulated anomalies.

Graph (one ONNX file, no host scoring): image (N,3,H,W) → ``PatchFeatures`` (PatchCore's: the frozen
backbone stages, each averaged over ``aggregation``×``aggregation``, upsampled to the finest grid and
concatenated, D = ΣCᵢ; Lite0 stages 2+4 → D = 152, h = H/8) → ``SimpleNetHead``: per position,
z = (x − μ)/σ with the training patches' per-channel mean / std (fixed buffers), the **adaptor**
a = W z + b (one Linear D→D), the **discriminator** s = w₂ᵀ LeakyReLU₀.₂(W₁ a + b₁) + b₂ (D→hidden→1)
→ ``error`` (N,1,h,w) = softplus(−s): high where the discriminator finds the patch unlike good ones
(softplus keeps the map ≥ 0 like every other detector's distances; it is monotone, so the ranking is
−s's). The artifact's scoring kind is ``reconstruction`` (the graph's ``error`` output is the patch
score map, passed through); the host upsamples it to the input size, blurs it (σ = ``blur_sigma``)
and reduces it to the image score (``reduction``), as for PatchCore.
Fit: the features of every good training patch (plus ``augment`` views) are extracted once; then for
``epochs`` passes over shuffled mini-batches of ``batch_size`` patches: a = adaptor(z), ã = a + ε with
ε ~ N(0, ``noise_std``²·I) (in adapted units; the adaptor starts as a random projection that keeps the
standardised scale), and the truncated L1 loss of SimpleNet, mean(max(0, m − s(a))) +
mean(max(0, m + s(ã))) with margin m = ``margin`` (0.5 in the paper). Optimiser: ``training.train``
(AdamW, linear warm-up + cosine decay, seeded, tqdm bar, loss per step → ``loss_curve.png``).
Artifact: ``model.onnx`` (backbone + head) and ``weights.safetensors`` (the head only: μ, σ, adaptor,
discriminator; the backbone comes from its spec and weight hash), no pickle.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..artifact import InputSpec
from ..errors import ArtifactError, InputError
from .augment import parse_augment
from .backbones import BackboneSpec, build_backbone
from .detector import Detector
from .features import extract
from .patchcore import PatchFeatures
from .reconstruction import REDUCTIONS, WEIGHTS, TrainedWeights, check_int, load_weights, module_state
from .training import History, TrainSettings, train


class SimpleNetHead(torch.nn.Module):
    """Patch features (N,D,h,w) → ``error`` (N,1,h,w) = softplus(−discriminator(adaptor(standardised)))."""

    def __init__(self, channels: int, hidden: int = 256):
        super().__init__()
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("std", torch.ones(channels))
        self.adaptor = torch.nn.Linear(channels, channels)
        self.discriminator = torch.nn.Sequential(torch.nn.Linear(channels, hidden), torch.nn.LeakyReLU(0.2),
                                                 torch.nn.Linear(hidden, 1))
        torch.nn.init.xavier_normal_(self.adaptor.weight)  # as the paper: a random projection, scale kept
        torch.nn.init.zeros_(self.adaptor.bias)

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        """(…, D) raw features → (…, D) adapted features."""
        return self.adaptor((x - self.mean) / self.std)

    def logits(self, adapted: torch.Tensor) -> torch.Tensor:
        """(…, D) adapted features → (…,) discriminator scores (high = good)."""
        return self.discriminator(adapted)[..., 0]

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        s = self.logits(self.adapt(feats.permute(0, 2, 3, 1)))  # (N,h,w)
        return F.softplus(-s)[:, None]


class SimpleNetGraph(torch.nn.Module):
    """Normalised image (N,3,H,W) → ``error`` (N,1,h,w): frozen ``PatchFeatures`` then ``SimpleNetHead``."""

    def __init__(self, features: PatchFeatures, head: SimpleNetHead):
        super().__init__()
        self.features, self.head = features, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def truncated_l1(true_logits: torch.Tensor, fake_logits: torch.Tensor, margin: float) -> torch.Tensor:
    """SimpleNet's loss: mean(max(0, m − s_true)) + mean(max(0, m + s_fake))."""
    return torch.clamp(margin - true_logits, min=0).mean() + torch.clamp(margin + fake_logits, min=0).mean()


@dataclass
class SimpleNetConfig:
    backbone: dict[str, Any] = field(default_factory=lambda: BackboneSpec().to_dict())
    image_size: int = 224
    aggregation: int = 3
    hidden: int = 128  # discriminator width
    # σ of the simulated-anomaly noise, in adapted units (≈ the standardised feature scale). Chosen on held-out
    # good ELPV mono cells + the same cells with drawn defects (benchmarks/learned_detectors.py val, 4 epochs):
    # the paper's 0.015 (its units are WideResNet features') does not learn here (loss 0.99996, val AUROC 0.932),
    # 0.05 → 0.998 (loss 0.994), 0.15 → 0.9996 (loss 0.019).
    noise_std: float = 0.15
    margin: float = 0.5  # truncated L1 margin (the paper's)
    reduction: dict[str, Any] = field(default_factory=lambda: {"name": "top_fraction_mean", "fraction": 0.05})
    blur_sigma: float = 4.0
    augment: str = "none"  # or a comma list of hflip, vflip, rot180 (models/augment.py)
    image_batch: int = 16  # images per feature-extraction batch
    max_patches: int | None = 65536  # a seeded random subset of the training patches (None: all); bounds the fit time
    epochs: int = 8  # passes over the (max_patches) training patches
    batch_size: int = 2048  # patches per step
    lr: float = 1e-3
    weight_decay: float = 1e-5
    warmup_fraction: float = 0.05
    amp: str = "fp32"
    device: str = "auto"
    threads: int | None = None
    seed: int = 0


class SimpleNet(TrainedWeights, Detector):
    name = "simplenet"
    loss_title = "truncated L1"
    output_names = ("error",)
    config_class = SimpleNetConfig

    def __init__(self, config: SimpleNetConfig | None = None, progress: bool | None = None):
        self.config = cfg = config or SimpleNetConfig()
        check_int(self.name, "image_size", cfg.image_size, 8)
        check_int(self.name, "aggregation", cfg.aggregation)
        check_int(self.name, "hidden", cfg.hidden)
        check_int(self.name, "image_batch", cfg.image_batch)
        if cfg.max_patches is not None:
            check_int(self.name, "max_patches", cfg.max_patches)
        for name in ("noise_std", "margin"):
            value = getattr(cfg, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise InputError(f"{self.name}: {name} {value!r}: expected a number > 0")
        if not isinstance(cfg.blur_sigma, (int, float)) or not cfg.blur_sigma >= 0:
            raise InputError(f"{self.name}: blur_sigma {cfg.blur_sigma!r}: expected a number >= 0 (0 = no blur)")
        if not isinstance(cfg.reduction, dict) or cfg.reduction.get("name") not in REDUCTIONS:
            raise InputError(f"{self.name}: reduction {cfg.reduction!r}: expected {{'name': one of {', '.join(REDUCTIONS)}}}")
        self.views = parse_augment(cfg.augment)
        self.settings().check(self.name)
        self.progress = progress
        self.spec = BackboneSpec.from_dict(cfg.backbone).with_weights_hash()
        self.features = PatchFeatures(build_backbone(self.spec), cfg.aggregation).eval()
        with torch.no_grad():
            probe = self.features(torch.zeros(1, 3, cfg.image_size, cfg.image_size))
        self.channels, self.grid = int(probe.shape[1]), (int(probe.shape[2]), int(probe.shape[3]))
        self.reset_head()

    def reset_head(self) -> None:
        """A fresh, untrained head drawn from ``seed`` (what ``__init__`` makes; refit the same detector)."""
        torch.manual_seed(self.config.seed)
        self.head = SimpleNetHead(self.channels, self.config.hidden).eval()
        self.history: History | None = None
        self.n_images = self.n_patches = self.n_patches_total = 0

    def settings(self) -> TrainSettings:
        names = {f.name for f in fields(TrainSettings)}
        return TrainSettings(**{k: v for k, v in asdict(self.config).items() if k in names})

    def input_spec(self) -> InputSpec:
        size = self.config.image_size
        return InputSpec(name="image", height=size, width=size, mean=tuple(self.spec.mean), std=tuple(self.spec.std))

    def patches(self, paths: Sequence[Path]) -> torch.Tensor:
        """Features of every patch of ``paths`` (and their ``augment`` views) → (M, D) float32."""
        feats = extract(self.features, list(paths), self.input_spec(), self.config.image_batch, self.progress,
                        self.views)
        return torch.from_numpy(np.ascontiguousarray(feats.transpose(0, 2, 3, 1).reshape(-1, feats.shape[1])))

    def loss(self, head: SimpleNetHead, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Truncated L1 of one batch of raw patch features (B, D); noise drawn from ``generator``."""
        adapted = head.adapt(batch)
        noise = torch.randn(adapted.shape, generator=generator).to(adapted) * float(self.config.noise_std)
        scores = head.logits(torch.cat([adapted, adapted + noise]))
        n = len(batch)
        return truncated_l1(scores[:n], scores[n:], float(self.config.margin))

    def fit(self, train_paths: Sequence[Path]) -> "SimpleNet":
        if len(train_paths) == 0:
            raise InputError(f"no training images: {self.name} needs at least one good image")
        return self.fit_patches(self.patches(train_paths), len(train_paths))

    def fit_patches(self, data: torch.Tensor, n_images: int) -> "SimpleNet":
        """Train the head on precomputed patch features (M, D) (``patches``) of ``n_images`` images; at most
        ``max_patches`` of them (a seeded random subset), standardised by the statistics of all M."""
        if data.ndim != 2 or data.shape[1] != self.channels or len(data) == 0:
            raise InputError(f"{self.name}: patch features {tuple(data.shape)}: expected (M, {self.channels}), M > 0")
        self.n_patches_total = len(data)
        limit = self.config.max_patches
        with torch.no_grad():
            self.head.mean.copy_(data.mean(0))
            self.head.std.copy_(data.std(0).clamp_min(1e-6))
        if limit is not None and len(data) > limit:
            pick = torch.randperm(len(data), generator=torch.Generator().manual_seed(self.config.seed))[:limit]
            data = data[torch.sort(pick).values]
        self.n_images, self.n_patches = int(n_images), len(data)
        self.history = train(self.head, data, self.loss, self.settings(), self.progress, desc=self.name)
        self.head.eval()
        return self

    def graph(self) -> SimpleNetGraph:
        return SimpleNetGraph(self.features, self.head).eval()

    def trained_state(self) -> dict[str, torch.Tensor]:
        return module_state(self.head)

    def model_block(self) -> dict[str, Any]:
        return {"backbone": self.spec.to_dict(), "aggregation": self.config.aggregation,
                "architecture": {"channels": self.channels, "hidden": self.config.hidden}, "weights": WEIGHTS}

    def metadata_blocks(self) -> dict[str, Any]:
        self._require_fitted()
        cfg = self.config
        h, w = self.grid
        params = int(sum(p.numel() for p in self.head.parameters()))
        return {
            "input": self.input_spec(),
            "model": {**self.model_block(), "parameters": params,
                      "fit": {**asdict(cfg), "n_images": self.n_images, "n_patches": self.n_patches,
                              "n_patches_total": self.n_patches_total,
                              "augment_views": list(self.views), "history": self.history.summary()}},
            "outputs": {"names": list(self.output_names), "error": {"shape": ["N", 1, h, w],
                                                                     "stride": cfg.image_size // h}},
            "scoring": {"kind": "reconstruction", "placement": "host", "map": "softplus(-discriminator)"},
            "postprocess": {"blur_sigma": cfg.blur_sigma, "reduction": cfg.reduction},
        }

    @classmethod
    def build_graph(cls, model_block: dict[str, Any], artifact=None) -> SimpleNetGraph:
        if artifact is None:
            raise ArtifactError(f"{cls.name}: the trained adaptor and discriminator live in the artifact's "
                                f"{WEIGHTS}; pass the artifact to build_graph")
        arch = model_block["architecture"]
        features = PatchFeatures(build_backbone(BackboneSpec.from_dict(model_block["backbone"])),
                                 model_block["aggregation"]).eval()
        head = load_weights(SimpleNetHead(int(arch["channels"]), int(arch["hidden"])),
                            artifact.path(model_block.get("weights", WEIGHTS)))
        return SimpleNetGraph(features, head.eval()).eval()
