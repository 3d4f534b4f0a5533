"""Convolutional autoencoder trained on good images only; anomaly map = per-pixel reconstruction error.

Architecture (``ConvAutoencoder``): ``depth`` encoder stages (4×4 conv, stride 2, LeakyReLU 0.2; widths
``width``·2ⁱ capped at 8·``width``) from ``image_size`` down to a s×s grid (s = image_size / 2^depth,
default depth: s = 4), flattened into a ``latent_dim`` vector by a linear layer (the bottleneck: small
enough that the network cannot copy its input, so unseen structure is reconstructed badly), then the
mirror decoder (linear → s×s, 4×4 transposed convs, a final 3×3 conv to ``channels``). No normalisation
layers: train and eval behave the same, and the graph is a plain chain of convs for every backend.
Loss: MSE on [0,1] pixels, plus ``ssim_weight`` · (1 − SSIM) when > 0. Training: ``training.train``
(AdamW, warm-up + cosine, seeded, bf16 autocast only where measured faster).
Graph: image (N,3,H,W) → ``error`` (N,1,H,W), ``reconstruction`` (N,C,H,W) (see ``reconstruction.py``).
``encode(x)`` → (N, latent_dim) latent codes (used by the digits demo's t-SNE).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import InputError
from .reconstruction import SSIM, ErrorMap, ReconstructionDetector, check_int, reconstruction_loss, to_channels


class ConvAutoencoder(torch.nn.Module):
    def __init__(self, image_size: int = 64, channels: int = 3, width: int = 32, depth: int = 4,
                 latent_dim: int = 64, error_map: str = "mse", map_sigma: float = 0.0):
        super().__init__()
        self.channels = channels
        widths = [min(width * 2**i, 8 * width) for i in range(depth)]
        self.grid = image_size // 2**depth
        act = lambda: torch.nn.LeakyReLU(0.2)  # noqa: E731
        enc, c_in = [], channels
        for w in widths:
            enc += [torch.nn.Conv2d(c_in, w, 4, stride=2, padding=1), act()]
            c_in = w
        self.encoder = torch.nn.Sequential(*enc)
        flat = widths[-1] * self.grid * self.grid
        self.to_latent = torch.nn.Linear(flat, latent_dim)
        self.from_latent = torch.nn.Sequential(torch.nn.Linear(latent_dim, flat), act())
        self.unflat = (widths[-1], self.grid, self.grid)
        dec = []
        for w_in, w_out in zip(widths[::-1], widths[::-1][1:] + [widths[0]]):
            dec += [torch.nn.ConvTranspose2d(w_in, w_out, 4, stride=2, padding=1), act()]
        dec.append(torch.nn.Conv2d(widths[0], channels, 3, padding=1))
        self.decoder = torch.nn.Sequential(*dec)
        self.error = ErrorMap(error_map, map_sigma)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised image (N,3,H,W) → latent codes (N, latent_dim)."""
        return self.to_latent(self.encoder(to_channels(x, self.channels)).flatten(1))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised image (N,3,H,W) → reconstruction (N,C,H,W), normalised units."""
        z = self.from_latent(self.encode(x)).view(-1, *self.unflat)
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        recon = self.reconstruct(x)
        return self.error(recon, to_channels(x, self.channels)), recon


@dataclass
class AutoencoderConfig:
    image_size: int = 64
    channels: int = 3  # 1: gray (the graph averages the input channels), 3: colour
    width: int = 32
    depth: int | None = None  # stride-2 stages; None: down to a 4×4 grid
    latent_dim: int = 64
    ssim_weight: float = 0.0  # loss = MSE + ssim_weight · (1 − SSIM)
    error_map: str = "mse"  # mse | ssim
    map_sigma: float = 1.0  # Gaussian smoothing of the error map, in graph (0 = none)
    reduction: dict[str, Any] = field(default_factory=lambda: {"name": "mean"})
    epochs: int = 30
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05
    amp: str = "auto"  # auto | fp32 | bf16
    device: str = "auto"
    threads: int | None = None  # torch CPU threads while training (None: torch's default)
    seed: int = 0


class Autoencoder(ReconstructionDetector):
    name = "autoencoder"
    config_class = AutoencoderConfig

    def check_config(self) -> None:
        cfg = self.config
        check_int(self.name, "width", cfg.width)
        check_int(self.name, "latent_dim", cfg.latent_dim)
        if not isinstance(cfg.ssim_weight, (int, float)) or not cfg.ssim_weight >= 0:
            raise InputError(f"{self.name}: ssim_weight {cfg.ssim_weight!r}: expected a number >= 0")
        depth = self.depth()
        if depth < 1 or cfg.image_size % 2**depth:
            raise InputError(f"{self.name}: image_size {cfg.image_size} is not divisible by 2^depth = {2**depth}; "
                             "choose a multiple of it (e.g. 32, 64, 128) or another depth")

    def depth(self) -> int:
        cfg = self.config
        if cfg.depth is None:
            return max(1, (cfg.image_size // 4).bit_length() - 1)
        check_int(self.name, "depth", cfg.depth)
        return cfg.depth

    def architecture(self) -> dict[str, Any]:
        cfg = self.config
        return {"image_size": cfg.image_size, "channels": cfg.channels, "width": cfg.width, "depth": self.depth(),
                "latent_dim": cfg.latent_dim, "error_map": cfg.error_map, "map_sigma": float(cfg.map_sigma)}

    @classmethod
    def make_module(cls, arch: dict[str, Any]) -> ConvAutoencoder:
        return ConvAutoencoder(**arch)

    def loss(self, module: ConvAutoencoder, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if not hasattr(self, "_ssim"):
            self._ssim = SSIM().to(batch.device)
        return reconstruction_loss(module.reconstruct(batch), to_channels(batch, module.channels), self._ssim,
                                   float(self.config.ssim_weight))
