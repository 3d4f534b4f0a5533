"""A small masked autoencoder ViT trained from scratch on good images; anomaly map = reconstruction error.

Model: ``patch_size`` patches → linear embedding (dim D) + fixed 2-D sinusoidal position embedding +
a learnable one (zero-initialised: the sinusoid is the prior, the learnable part the correction).
Masked patches are replaced by a learnable mask token *inside* the encoder input (SimMIM style: every
token always enters the encoder, so the token count and the graph do not depend on the mask).
Encoder: ``depth`` pre-norm transformer blocks; the norm is LayerNorm or DyT (``norm="dyt"``: Dynamic
Tanh, Zhu et al. 2025, y = γ·tanh(α·x) + β with a learnable scalar α (init ``dyt_alpha``) and per-channel
γ, β). Decoder: the outputs of the encoder blocks ``aggregate`` (default: three blocks spread over the
depth, the last included) are normalised, concatenated and projected to the decoder width — a
multi-scale aggregation of shallow (local) and deep (contextual) tokens — then ``decoder_depth``
(default 1) blocks and a linear head to the patch pixels.

Training: block-wise masking (BEiT): rectangles of patches of random area and aspect ratio until
``mask_ratio`` of the patches are masked; loss = MSE on the masked patches only ([0,1] pixels).

Inference — several complementary masking passes, not "no mask", and why: with nothing masked the
model sees every patch it must reconstruct and can copy it, anomaly included, so the error map carries
little signal. Instead the grid is tiled with ``eval_block``×``eval_block`` blocks of patches, and the
blocks are split into K = ``eval_stride``² groups by their (row mod s, column mod s) position; pass k
masks group k. Every patch is masked in exactly one pass (``inference_masks``, tested), and its
reconstruction is taken from that pass: a deterministic graph (constant masks, no randomness) whose
cost is K encoder passes, batched as N·K in one run. Masked blocks look like the training masks
(contiguous blocks), and K = 4 masks 25 % per pass, inside the training ratio range.

Graph: image (N,3,H,W) → ``error`` (N,1,H,W), ``reconstruction`` (N,C,H,W) (see ``reconstruction.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import InputError
from .reconstruction import ErrorMap, ReconstructionDetector, check_int, to_channels

NORMS = ("layernorm", "dyt")


class DyT(torch.nn.Module):
    """Dynamic Tanh: γ ⊙ tanh(α x) + β, α a learnable scalar, γ/β per channel (a LayerNorm replacement)."""

    def __init__(self, dim: int, alpha: float = 0.5):
        super().__init__()
        self.alpha = torch.nn.Parameter(torch.full((1,), float(alpha)))
        self.weight = torch.nn.Parameter(torch.ones(dim))
        self.bias = torch.nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * torch.tanh(self.alpha * x) + self.bias


def make_norm(kind: str, dim: int, alpha: float) -> torch.nn.Module:
    return DyT(dim, alpha) if kind == "dyt" else torch.nn.LayerNorm(dim, eps=1e-6)


def sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sine/cosine position embedding (grid², dim): half the channels encode rows, half columns."""
    if dim % 4:
        raise InputError(f"mae: dim {dim}: expected a multiple of 4 (2-D sine/cosine embedding)")
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4))
    rows, cols = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64), indexing="ij")
    parts = []
    for pos in (rows.reshape(-1), cols.reshape(-1)):
        angle = pos[:, None] * omega[None]
        parts += [np.sin(angle), np.cos(angle)]
    return torch.from_numpy(np.concatenate(parts, axis=1)).float()


class Block(torch.nn.Module):
    """Pre-norm transformer block; attention written out (MatMul/Softmax) so every backend exports it."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, norm: str, alpha: float):
        super().__init__()
        self.heads = heads
        self.norm1 = make_norm(norm, dim, alpha)
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.proj = torch.nn.Linear(dim, dim)
        self.norm2 = make_norm(norm, dim, alpha)
        hidden = int(dim * mlp_ratio)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        h = self.heads
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4).unbind(0)
        attn = torch.softmax((q @ k.transpose(-2, -1)) * (d // h) ** -0.5, dim=-1)
        x = x + self.proj((attn @ v).transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm2(x))


def inference_masks(grid: int, block: int, stride: int) -> torch.Tensor:
    """(K = stride², grid²) float 0/1: patch (i, j) is masked in pass ((i//block) % stride)·stride + (j//block) % stride.

    Each column sums to exactly 1 (every patch masked once). InputError if a pass would mask nothing.
    """
    i, j = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
    group = ((i // block) % stride) * stride + (j // block) % stride
    masks = np.stack([(group == k).reshape(-1) for k in range(stride * stride)]).astype(np.float32)
    if (masks.sum(axis=1) == 0).any():
        raise InputError(f"mae: a {grid}×{grid} patch grid cannot hold {stride}×{stride} groups of "
                         f"{block}×{block}-patch blocks; lower eval_block or eval_stride")
    return torch.from_numpy(masks)


def block_mask(grid: int, ratio: float, generator: torch.Generator, min_area: int = 2,
               aspect: float = 0.3) -> torch.Tensor:
    """One BEiT-style block-wise mask (grid²,) bool: random rectangles until ≥ ``ratio`` of patches."""
    target = max(1, int(round(ratio * grid * grid)))
    mask = torch.zeros(grid, grid, dtype=torch.bool)
    log_lo, log_hi = math.log(aspect), math.log(1 / aspect)
    for _ in range(100):  # bounded: rectangles may overlap already masked patches
        left = target - int(mask.sum())
        if left <= 0:
            break
        u = torch.rand(3, generator=generator).tolist()
        area = min_area + u[0] * (max(min_area, left) - min_area)
        r = math.exp(log_lo + u[1] * (log_hi - log_lo))
        h = max(1, min(grid, int(round(math.sqrt(area * r)))))
        w = max(1, min(grid, int(round(math.sqrt(area / r)))))
        top = int(torch.randint(0, grid - h + 1, (1,), generator=generator))
        lft = int(torch.randint(0, grid - w + 1, (1,), generator=generator))
        mask[top:top + h, lft:lft + w] = True
    return mask.reshape(-1)


class MaskedAutoencoderViT(torch.nn.Module):
    def __init__(self, image_size: int = 64, channels: int = 3, patch_size: int = 8, dim: int = 128, depth: int = 6,
                 heads: int = 4, mlp_ratio: float = 2.0, decoder_dim: int = 96, decoder_depth: int = 1,
                 norm: str = "layernorm", dyt_alpha: float = 0.5, aggregate: Sequence[int] = (1, 3, 5),
                 eval_block: int = 2, eval_stride: int = 2, error_map: str = "mse", map_sigma: float = 0.0):
        super().__init__()
        self.channels, self.patch, self.image_size = channels, patch_size, image_size
        self.grid = image_size // patch_size
        self.aggregate = [int(i) for i in aggregate]
        self.embed = torch.nn.Conv2d(channels, dim, patch_size, stride=patch_size)
        self.register_buffer("pos_fixed", sincos_2d(self.grid, dim)[None], persistent=False)
        self.pos = torch.nn.Parameter(torch.zeros(1, self.grid**2, dim))
        self.mask_token = torch.nn.Parameter(torch.zeros(1, 1, dim))
        torch.nn.init.normal_(self.mask_token, std=0.02)
        self.blocks = torch.nn.ModuleList(Block(dim, heads, mlp_ratio, norm, dyt_alpha) for _ in range(depth))
        self.agg_norms = torch.nn.ModuleList(make_norm(norm, dim, dyt_alpha) for _ in self.aggregate)
        self.agg_proj = torch.nn.Linear(dim * len(self.aggregate), decoder_dim)
        self.dec_pos = torch.nn.Parameter(torch.zeros(1, self.grid**2, decoder_dim))
        dec_heads = max(1, decoder_dim // 32)
        self.decoder = torch.nn.ModuleList(Block(decoder_dim, dec_heads, mlp_ratio, norm, dyt_alpha)
                                           for _ in range(decoder_depth))
        self.dec_norm = make_norm(norm, decoder_dim, dyt_alpha)
        self.head = torch.nn.Linear(decoder_dim, patch_size * patch_size * channels)
        self.register_buffer("eval_masks", inference_masks(self.grid, eval_block, eval_stride), persistent=False)
        self.error = ErrorMap(error_map, map_sigma)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(N,C,H,W) → (N, L, p·p·C)."""
        n, c, _, _ = x.shape
        g, p = self.grid, self.patch
        return x.view(n, c, g, p, g, p).permute(0, 2, 4, 3, 5, 1).reshape(n, g * g, p * p * c)

    def unpatchify(self, t: torch.Tensor) -> torch.Tensor:
        """(N, L, p·p·C) → (N,C,H,W)."""
        n = t.shape[0]
        g, p, c = self.grid, self.patch, self.channels
        return t.view(n, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(n, c, g * p, g * p)

    def predict(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """image (B,C,H,W) in model channels, mask (B,L) 0/1 float → predicted patches (B,L,p·p·C)."""
        tokens = self.embed(image).flatten(2).transpose(1, 2)
        m = mask.unsqueeze(-1).to(tokens.dtype)
        x = tokens * (1 - m) + self.mask_token.to(tokens.dtype) * m + self.pos_fixed + self.pos
        taps = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.aggregate:
                taps.append(x)
        y = self.agg_proj(torch.cat([norm(t) for norm, t in zip(self.agg_norms, taps)], dim=-1)) + self.dec_pos
        for block in self.decoder:
            y = block(y)
        return self.head(self.dec_norm(y))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised image (N,3,H,W) → reconstruction (N,C,H,W) from the K complementary masked passes."""
        image = to_channels(x, self.channels)
        n = image.shape[0]
        k, length = self.eval_masks.shape
        batch = image.unsqueeze(1).expand(-1, k, -1, -1, -1).reshape(n * k, *image.shape[1:])
        masks = self.eval_masks.unsqueeze(0).expand(n, -1, -1).reshape(n * k, length)
        pred = self.predict(batch, masks).view(n, k, length, -1)
        patches = (pred * self.eval_masks.view(1, k, length, 1)).sum(dim=1)  # each patch from its one masked pass
        return self.unpatchify(patches)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        recon = self.reconstruct(x)
        return self.error(recon, to_channels(x, self.channels)), recon


@dataclass
class MaeConfig:
    image_size: int = 64
    channels: int = 3
    patch_size: int = 8
    dim: int = 128
    depth: int = 6
    heads: int = 4
    mlp_ratio: float = 2.0
    decoder_dim: int = 96
    decoder_depth: int = 1
    norm: str = "layernorm"  # layernorm | dyt
    dyt_alpha: float = 0.5
    aggregate: list[int] | None = None  # encoder block indices feeding the decoder; None: 3 spread, last included
    mask_ratio: float = 0.4  # training, block-wise
    eval_block: int = 2  # inference masks: blocks of eval_block × eval_block patches …
    eval_stride: int = 2  # … in eval_stride² complementary passes
    error_map: str = "mse"
    map_sigma: float = 1.0
    reduction: dict[str, Any] = field(default_factory=lambda: {"name": "mean"})
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_fraction: float = 0.05
    amp: str = "auto"
    device: str = "auto"
    threads: int | None = None
    seed: int = 0


class MaskedAutoencoder(ReconstructionDetector):
    name = "mae"
    config_class = MaeConfig

    def check_config(self) -> None:
        cfg, owner = self.config, self.name
        for name in ("patch_size", "dim", "depth", "heads", "decoder_dim", "decoder_depth", "eval_block",
                     "eval_stride"):
            check_int(owner, name, getattr(cfg, name))
        if cfg.image_size % cfg.patch_size:
            raise InputError(f"{owner}: image_size {cfg.image_size} is not a multiple of patch_size {cfg.patch_size}")
        if cfg.dim % cfg.heads or cfg.dim % 4:
            raise InputError(f"{owner}: dim {cfg.dim}: expected a multiple of heads ({cfg.heads}) and of 4")
        if cfg.decoder_dim % max(1, cfg.decoder_dim // 32):
            raise InputError(f"{owner}: decoder_dim {cfg.decoder_dim}: expected a multiple of 32 (or less than 32)")
        if cfg.norm not in NORMS:
            raise InputError(f"{owner}: norm '{cfg.norm}': expected one of {', '.join(NORMS)}")
        if not isinstance(cfg.mask_ratio, (int, float)) or not 0 < cfg.mask_ratio < 1:
            raise InputError(f"{owner}: mask_ratio {cfg.mask_ratio!r}: expected a value in (0, 1)")
        if not isinstance(cfg.mlp_ratio, (int, float)) or not cfg.mlp_ratio > 0:
            raise InputError(f"{owner}: mlp_ratio {cfg.mlp_ratio!r}: expected a positive number")
        bad = [i for i in self.aggregate() if not 0 <= i < cfg.depth]
        if bad or not self.aggregate():
            raise InputError(f"{owner}: aggregate {cfg.aggregate!r}: expected encoder block indices in 0..{cfg.depth - 1}")
        inference_masks(cfg.image_size // cfg.patch_size, cfg.eval_block, cfg.eval_stride)

    def aggregate(self) -> list[int]:
        cfg = self.config
        if cfg.aggregate is None:
            return sorted({max(0, (cfg.depth * (i + 1)) // 3 - 1) for i in range(3)})
        if not isinstance(cfg.aggregate, (list, tuple)) or not all(isinstance(i, int) for i in cfg.aggregate):
            raise InputError(f"{self.name}: aggregate {cfg.aggregate!r}: expected a list of block indices")
        return sorted(set(cfg.aggregate))

    def architecture(self) -> dict[str, Any]:
        cfg = self.config
        keys = ("image_size", "channels", "patch_size", "dim", "depth", "heads", "mlp_ratio", "decoder_dim",
                "decoder_depth", "norm", "dyt_alpha", "eval_block", "eval_stride", "error_map", "map_sigma")
        return {**{k: getattr(cfg, k) for k in keys}, "aggregate": self.aggregate()}

    @classmethod
    def make_module(cls, arch: dict[str, Any]) -> MaskedAutoencoderViT:
        return MaskedAutoencoderViT(**arch)

    def loss(self, module: MaskedAutoencoderViT, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        image = to_channels(batch, module.channels)
        masks = torch.stack([block_mask(module.grid, self.config.mask_ratio, generator) for _ in range(len(batch))])
        masks = masks.to(batch.device).float()
        pred = module.predict(image, masks).float()
        per_patch = ((pred - module.patchify(image)) * 0.5).square().mean(dim=-1)
        return (per_patch * masks).sum() / masks.sum()
