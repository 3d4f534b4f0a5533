"""Synthetic-defect supervision (DRAEM-style): a small segmentation head on frozen backbone features,
trained on good images with defects drawn on the fly (``datasets.synthetic.draw_defect``).

Graph (``SyntheticSegNet``): normalised image (N,3,H,W) → ``error`` (N,1,H,W), the per-pixel defect
probability: frozen EfficientNet-Lite stages (PatchCore's ``PatchFeatures``: 3×3 local averaging,
stages upsampled to the finest grid, concatenated, D channels at stride s) → standardised with the
training features' per-channel mean / std → [optionally one more channel: the distance of each patch
to its nearest row of a 1 % greedy coreset of the good patches (PatchCore's score, in graph), divided
by its 99th percentile on the good training patches] → ``layers`` 3×3 conv + ReLU of ``hidden``
channels → 1×1 conv → logit (N,1,h,w) → sigmoid → bilinear upsample to (H,W). One graph, one ONNX file:
the runtime's pass-through ``reconstruction`` head takes ``error`` as the map; the image score is a
``reduction`` of it (default: mean of the top 1 %).

Fit (``fit``): every good image is resized to the model size once (uint8, as the runtime resizes);
their features are computed once (good half of each batch, the bank and the statistics). Each step
takes ``batch_size`` good feature maps plus ``batch_size`` fresh images with 1–2 drawn defects
(type, place and strength in (0.15, 1] from a generator seeded by (seed, step)), through the frozen
backbone without gradients; loss = focal (γ=2) + dice of the grid logits against the mask max-pooled
to the grid (``grid_targets``).
Adam, cosine learning rate. Real defect labels are never seen. Weights: ``weights.safetensors`` (head
and buffers; the backbone is rebuilt from its spec), rebuilt by ``build_graph`` with strict keys.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..artifact import InputSpec
from ..errors import ArtifactError, InputError
from .backbones import BackboneSpec, build_backbone
from .coreset import greedy_coreset
from .detector import Detector
from .patchcore import PatchFeatures
from .reconstruction import REDUCTIONS, WEIGHTS, TrainedWeights, load_weights
from .training import History

LOSSES = ("focal_dice", "bce_dice")


class SyntheticSegNet(torch.nn.Module):
    """image (N,3,H,W) → defect probability (N,1,H,W). ``bank_rows`` = 0: no kNN channel."""

    def __init__(self, extractor: torch.nn.Module, aggregation: int, channels: int, hidden: int = 64,
                 layers: int = 2, bank_rows: int = 0):
        super().__init__()
        self.features = PatchFeatures(extractor, aggregation)
        self.register_buffer("feat_mean", torch.zeros(1, channels, 1, 1))
        self.register_buffer("feat_std", torch.ones(1, channels, 1, 1))
        self.use_knn = bank_rows > 0
        self.register_buffer("bank", torch.zeros(bank_rows, channels))
        self.register_buffer("bank_sq", torch.zeros(bank_rows))
        self.register_buffer("knn_scale", torch.ones(()))
        convs, c_in = [], channels + int(self.use_knn)
        for _ in range(layers):
            convs += [torch.nn.Conv2d(c_in, hidden, 3, padding=1), torch.nn.ReLU()]
            c_in = hidden
        convs.append(torch.nn.Conv2d(c_in, 1, 1))
        self.head = torch.nn.Sequential(*convs)

    def knn_distance(self, f: torch.Tensor) -> torch.Tensor:
        """(N,D,h,w) raw features → (N,1,h,w) distance to the nearest bank row (‖q‖² − 2q·m + ‖m‖²)."""
        n, d, h, w = f.shape
        q = f.permute(0, 2, 3, 1).reshape(-1, d)
        d2 = (q * q).sum(1, keepdim=True) - 2.0 * q @ self.bank.t() + self.bank_sq
        return d2.min(dim=1).values.clamp_min(0).sqrt().reshape(n, 1, h, w)

    def inputs(self, f: torch.Tensor) -> torch.Tensor:
        """Raw features (N,D,h,w) → the head's input (standardised features [+ scaled kNN distance])."""
        z = (f - self.feat_mean) / self.feat_std
        if self.use_knn:
            z = torch.cat([z, self.knn_distance(f) / self.knn_scale], dim=1)
        return z

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.inputs(self.features(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        prob = torch.sigmoid(self.logits(x))
        return F.interpolate(prob, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def state_to_save(self) -> dict[str, torch.Tensor]:
        """Everything but the backbone (rebuilt from its spec and weight package)."""
        return {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()
                if not k.startswith("features.")}


@dataclass
class SyntheticSegConfig:
    backbone: dict[str, Any] = field(default_factory=lambda: BackboneSpec().to_dict())
    image_size: int = 224
    aggregation: int = 3
    hidden: int = 64
    layers: int = 2
    knn_channel: bool = True  # PatchCore's distance as an extra input channel, in the same graph
    coreset_fraction: float = 0.01
    defects: list[str] = field(default_factory=lambda: ["scratch", "spot", "crack", "missing_piece", "dark_area",
                                                        "broken_finger"])
    min_strength: float = 0.15
    loss: str = "focal_dice"
    epochs: int = 6
    batch_size: int = 8  # good feature maps + as many fresh defective images per step
    lr: float = 1e-3
    reduction: dict[str, Any] = field(default_factory=lambda: {"name": "top_fraction_mean", "fraction": 0.01})
    blur_sigma: float = 4.0
    threads: int | None = None
    seed: int = 0


def load_frames(paths: Sequence[Path], size: int) -> np.ndarray:
    """Images → (N,S,S,3) uint8 RGB, resized as the runtime does (bilinear, half-pixel centres)."""
    from ..runtime.preprocess import read_image, to_rgb_float

    out = np.empty((len(paths), size, size, 3), np.uint8)
    for i, p in enumerate(paths):
        rgb = to_rgb_float(read_image(p))
        rgb = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_LINEAR) if rgb.shape[:2] != (size, size) else rgb
        out[i] = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    return out


def normalise(frames: np.ndarray, spec: InputSpec) -> torch.Tensor:
    """(N,S,S,3) uint8 RGB → (N,3,S,S) normalised float32 with the input spec's mean / std / colour order."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0
    if spec.color == "BGR":
        x = x.flip(1)
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    return (x - mean) / std


def draw_batch(frames: np.ndarray, defects: Sequence[str], min_strength: float,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(B,S,S,3) good frames → (frames with 1–2 drawn defects each, masks (B,S,S) float32)."""
    from ..datasets.synthetic import draw_defect

    out, masks = frames.copy(), np.zeros(frames.shape[:3], np.float32)
    for i in range(len(frames)):
        for _ in range(1 + int(rng.random() < 0.3)):
            defect = defects[int(rng.integers(len(defects)))]
            out[i], mask = draw_defect(out[i], defect, rng, float(rng.uniform(min_strength, 1.0)))
            masks[i] = np.maximum(masks[i], mask)
    return out, masks


def grid_targets(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Pixel masks (N,H,W) → (N,h,w) targets on the feature grid: 1 where a cell holds any defect pixel
    (a 1-px crack still marks its cell)."""
    return F.adaptive_max_pool2d(masks[:, None], grid)[:, 0]


def seg_loss(logits: torch.Tensor, masks: torch.Tensor, kind: str) -> torch.Tensor:
    """Logits (N,1,h,w) against pixel masks (N,H,W), on the feature grid → focal (γ=2) or BCE, + soft dice."""
    up = logits[:, 0]
    masks = grid_targets(masks, tuple(up.shape[-2:]))
    bce = F.binary_cross_entropy_with_logits(up, masks, reduction="none")
    if kind == "focal_dice":
        p_t = torch.exp(-bce)
        pixel = ((1 - p_t) ** 2 * bce).mean()
    else:
        pixel = bce.mean()
    prob = torch.sigmoid(up)
    inter = (prob * masks).sum()
    dice = 1 - (2 * inter + 1) / (prob.sum() + masks.sum() + 1)
    return pixel + dice


class SyntheticSeg(TrainedWeights, Detector):
    name = "synthetic_seg"
    output_names = ("error",)
    config_class = SyntheticSegConfig

    def __init__(self, config: SyntheticSegConfig | None = None, progress: bool | None = None):
        self.config = config or SyntheticSegConfig()
        self._check()
        self.progress = progress
        self.spec = BackboneSpec.from_dict(self.config.backbone).with_weights_hash()
        self.net: SyntheticSegNet | None = None
        self.history: History | None = None
        self.n_train = 0

    def _check(self) -> None:
        from ..datasets.synthetic import DRAWERS

        cfg = self.config
        for name in ("image_size", "aggregation", "hidden", "layers", "epochs", "batch_size"):
            value = getattr(cfg, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{self.name}: {name} {value!r}: expected a positive integer")
        if cfg.image_size < 32:
            raise InputError(f"{self.name}: image_size {cfg.image_size}: expected at least 32 pixels")
        bad = [d for d in cfg.defects if d not in DRAWERS] if isinstance(cfg.defects, (list, tuple)) else [cfg.defects]
        if bad or not cfg.defects:
            raise InputError(f"{self.name}: defects {cfg.defects!r}: expected a non-empty list of {', '.join(DRAWERS)}")
        if cfg.loss not in LOSSES:
            raise InputError(f"{self.name}: loss '{cfg.loss}': expected one of {', '.join(LOSSES)}")
        if not 0 < cfg.coreset_fraction <= 1:
            raise InputError(f"{self.name}: coreset_fraction {cfg.coreset_fraction}: expected a value in (0, 1]")
        if not 0 < cfg.min_strength <= 1:
            raise InputError(f"{self.name}: min_strength {cfg.min_strength}: expected a value in (0, 1]")
        if not isinstance(cfg.lr, (int, float)) or not cfg.lr > 0:
            raise InputError(f"{self.name}: lr {cfg.lr!r}: expected a positive number")
        if not isinstance(cfg.reduction, dict) or cfg.reduction.get("name") not in REDUCTIONS:
            raise InputError(f"{self.name}: reduction {cfg.reduction!r}: expected {{'name': one of {', '.join(REDUCTIONS)}}}")

    def input_spec(self) -> InputSpec:
        size = self.config.image_size
        return InputSpec(name="image", height=size, width=size, mean=tuple(self.spec.mean), std=tuple(self.spec.std))

    def architecture(self) -> dict[str, Any]:
        cfg = self.config
        return {"backbone": self.spec.to_dict(), "aggregation": cfg.aggregation, "channels": self.channels,
                "hidden": cfg.hidden, "layers": cfg.layers, "bank_rows": self.bank_rows}

    @classmethod
    def make_module(cls, arch: dict[str, Any]) -> SyntheticSegNet:
        extractor = build_backbone(BackboneSpec.from_dict(arch["backbone"]))
        return SyntheticSegNet(extractor, int(arch["aggregation"]), int(arch["channels"]), int(arch["hidden"]),
                               int(arch["layers"]), int(arch["bank_rows"])).eval()

    # --- fit -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def _good_features(self, net: SyntheticSegNet, x: torch.Tensor) -> torch.Tensor:
        from ..progress import steps

        bs = 16
        chunks = steps((x[i:i + bs] for i in range(0, len(x), bs)), (len(x) + bs - 1) // bs, "features", self.progress)
        return torch.cat([net.features(c) for c in chunks])

    def _set_statistics(self, net: SyntheticSegNet, feats: torch.Tensor) -> None:
        """Per-channel mean / std of the good features; the coreset bank and its distance scale."""
        n, d, h, w = feats.shape
        patches = feats.permute(0, 2, 3, 1).reshape(-1, d)
        net.feat_mean.copy_(patches.mean(0).view(1, d, 1, 1))
        net.feat_std.copy_(patches.std(0).clamp_min(1e-6).view(1, d, 1, 1))
        if not net.use_knn:
            return
        rows = net.bank.shape[0]
        index = greedy_coreset(patches.numpy(), n=rows, projection_dim=128, seed=self.config.seed,
                               progress=self.progress) if rows < len(patches) else np.arange(len(patches))
        bank = patches[torch.from_numpy(np.asarray(index))]
        net.bank.copy_(bank)
        net.bank_sq.copy_((bank * bank).sum(1))
        dist = torch.cat([net.knn_distance(feats[i:i + 16]).flatten() for i in range(0, n, 16)])
        net.knn_scale.copy_(torch.quantile(dist, 0.99).clamp_min(1e-6))

    def fit(self, train: Sequence[Path]) -> "SyntheticSeg":
        if len(train) == 0:
            raise InputError(f"no training images: {self.name} needs at least one good image")
        cfg = self.config
        previous = torch.get_num_threads()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        try:
            return self._fit(list(train))
        finally:
            torch.set_num_threads(previous)

    def _fit(self, train: list[Path]) -> "SyntheticSeg":
        from tqdm import tqdm

        cfg, spec = self.config, self.input_spec()
        torch.manual_seed(cfg.seed)
        extractor = build_backbone(self.spec)
        frames = load_frames(train, cfg.image_size)
        self.n_train = len(frames)
        probe = PatchFeatures(extractor, cfg.aggregation).eval()
        with torch.no_grad():
            _, self.channels, h, w = (int(v) for v in probe(normalise(frames[:1], spec)).shape)
        n_patches = len(frames) * h * w
        self.bank_rows = max(1, int(round(n_patches * cfg.coreset_fraction))) if cfg.knn_channel else 0
        net = SyntheticSegNet(extractor, cfg.aggregation, self.channels, cfg.hidden, cfg.layers, self.bank_rows).eval()
        good = self._good_features(net, normalise(frames, spec))
        self._set_statistics(net, good)
        for p in net.features.parameters():
            p.requires_grad_(False)
        batch = min(cfg.batch_size, len(frames))
        per_epoch = max(1, len(frames) // batch)
        total = per_epoch * cfg.epochs
        optimizer = torch.optim.Adam(net.head.parameters(), lr=cfg.lr)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
        history = History(amp="fp32", device="cpu")
        gen = torch.Generator().manual_seed(cfg.seed)
        start = time.perf_counter()
        with tqdm(total=total, desc=self.name, disable=None if self.progress is None else not self.progress,
                  leave=False, unit="step") as bar:
            for epoch in range(cfg.epochs):
                order = torch.randperm(len(frames), generator=gen).numpy()
                losses = []
                for i in range(per_epoch):
                    step = epoch * per_epoch + i
                    rng = np.random.default_rng([cfg.seed, 7, step])
                    pick = order[i * batch:(i + 1) * batch]
                    drawn, masks = draw_batch(frames[pick], cfg.defects, cfg.min_strength, rng)
                    with torch.no_grad():
                        bad_feats = net.features(normalise(drawn, spec))
                    other = torch.from_numpy(rng.choice(len(frames), batch, replace=False))
                    feats = torch.cat([bad_feats, good[other]])
                    target = torch.cat([torch.from_numpy(masks), torch.zeros(batch, *masks.shape[1:])])
                    loss = seg_loss(net.head(net.inputs(feats)), target, cfg.loss)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    history.lr.append(float(schedule.get_last_lr()[0]))
                    schedule.step()
                    value = float(loss.detach())
                    if not math.isfinite(value):
                        raise InputError(f"{self.name}: the loss became {value} at step {step}; lower lr")
                    losses.append(value)
                    history.step_loss.append(value)
                    bar.update(1)
                    bar.set_postfix(loss=f"{value:.4g}")
                history.epoch_loss.append(float(np.mean(losses)))
        history.seconds = time.perf_counter() - start
        self.net, self.history = net.eval(), history
        return self

    # --- export --------------------------------------------------------------------------------------
    def _require_fitted(self) -> SyntheticSegNet:
        if self.net is None:
            raise InputError(f"{self.name} is not trained: call fit() first")
        return self.net

    def graph(self) -> SyntheticSegNet:
        return self._require_fitted()

    def trained_state(self) -> dict[str, torch.Tensor]:
        return self._require_fitted().state_to_save()

    def metadata_blocks(self) -> dict[str, Any]:
        net = self._require_fitted()
        cfg, size = self.config, self.config.image_size
        params = int(sum(p.numel() for p in net.head.parameters()))
        return {
            "input": self.input_spec(),
            "model": {"architecture": self.architecture(), "weights": WEIGHTS, "parameters": params,
                      "fit": {**asdict(cfg), "n_train": self.n_train, "history": self.history.summary()}},
            "outputs": {"names": list(self.output_names), "error": {"shape": ["N", 1, size, size], "stride": 1}},
            "scoring": {"kind": "reconstruction", "placement": "host", "map": "defect probability"},
            "postprocess": {"blur_sigma": cfg.blur_sigma, "reduction": cfg.reduction},
        }

    @classmethod
    def build_graph(cls, model_block: dict[str, Any], artifact=None) -> SyntheticSegNet:
        if artifact is None:
            raise ArtifactError(f"{cls.name}: the trained head lives in the artifact's {WEIGHTS}; "
                                "pass the artifact to build_graph")
        net = cls.make_module(model_block["architecture"])
        head = _HeadView(net)
        load_weights(head, artifact.path(model_block.get("weights", WEIGHTS)))
        return net.eval()


class _HeadView(torch.nn.Module):
    """Loads ``state_to_save`` keys strictly into a net whose backbone comes from its own weights."""

    def __init__(self, net: SyntheticSegNet):
        super().__init__()
        self.net = net

    def state_dict(self, *args, **kwargs):  # noqa: D102 - the saved keys
        return self.net.state_to_save()

    def load_state_dict(self, state, strict: bool = True, assign: bool = False):
        own = {k: v for k, v in self.net.state_dict().items() if not k.startswith("features.")}
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if strict and (missing or unexpected):
            raise RuntimeError(f"missing keys {missing[:4]}, unexpected keys {unexpected[:4]}")
        for key, value in state.items():
            if own[key].shape != value.shape:
                raise RuntimeError(f"{key}: shape {tuple(value.shape)} in the file, {tuple(own[key].shape)} expected")
        return self.net.load_state_dict(state, strict=False)
