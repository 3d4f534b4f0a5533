"""Shared parts of the reconstruction detectors (autoencoder, masked autoencoder).

Contract of their exported graph: normalised image (N,3,H,W) (mean = std = 0.5, so pixels in [−1, 1])
→ ``error`` (N,1,H,W), the per-pixel anomaly map, and ``reconstruction`` (N,C,H,W), C = ``channels``
(1: the graph averages the three input channels first — gray data at a third of the cost; 3: colour).
``error`` is computed on [0, 1] pixels: the squared error averaged over channels (``error_map="mse"``)
or (1 − SSIM)/2 averaged over channels (``"ssim"``, Gaussian window σ=1.5), then optionally smoothed
in the graph by a Gaussian of σ = ``map_sigma`` pixels (so the image score, a ``reduction`` of this
map, sees the smoothed map too). The runtime's ``reconstruction`` head takes ``error`` as it is.

``ReconstructionDetector`` holds the common fit / export / reload logic: training through
``training.train``, weights written as ``weights.safetensors`` (no pickle) and read back by
``build_graph(model_block, artifact)`` with ``strict`` key checking.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..artifact import InputSpec
from ..errors import ArtifactError, InputError
from .detector import Detector
from .training import History, TrainSettings, train

WEIGHTS = "weights.safetensors"
LOSS_CURVE = "loss_curve.png"  # training record beside the artifact files (not hashed)
ERROR_MAPS = ("mse", "ssim")
REDUCTIONS = ("mean", "max", "top_fraction_mean")
MEAN = STD = 0.5


def gaussian_taps(sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian, ±3σ support (odd length)."""
    radius = max(1, int(3.0 * sigma + 0.5))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return (g / g.sum()).float()


class GaussianBlur(torch.nn.Module):
    """Depthwise separable Gaussian blur of (N,C,H,W), reflect borders; σ ≤ 0 → identity."""

    def __init__(self, sigma: float):
        super().__init__()
        self.sigma = float(sigma)
        taps = gaussian_taps(self.sigma) if self.sigma > 0 else torch.ones(1)
        self.register_buffer("taps", taps, persistent=False)
        self.pad = len(taps) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.sigma <= 0:
            return x
        c = x.shape[1]
        p = self.pad
        x = F.pad(x, (p, p, p, p), mode="reflect")
        x = F.conv2d(x, self.taps.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        return F.conv2d(x, self.taps.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


class SSIM(torch.nn.Module):
    """Per-pixel SSIM (N,C,H,W) of two images in [0, 1] (Wang et al. 2004, Gaussian window σ=1.5)."""

    C1, C2 = 0.01**2, 0.03**2

    def __init__(self, sigma: float = 1.5):
        super().__init__()
        self.blur = GaussianBlur(sigma)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        mu_a, mu_b = self.blur(a), self.blur(b)
        var_a = self.blur(a * a) - mu_a * mu_a
        var_b = self.blur(b * b) - mu_b * mu_b
        cov = self.blur(a * b) - mu_a * mu_b
        num = (2 * mu_a * mu_b + self.C1) * (2 * cov + self.C2)
        den = (mu_a * mu_a + mu_b * mu_b + self.C1) * (var_a + var_b + self.C2)
        return num / den


class ErrorMap(torch.nn.Module):
    """(reconstruction, target) in normalised units (N,C,H,W) → anomaly map (N,1,H,W) on [0,1] pixels."""

    def __init__(self, kind: str = "mse", sigma: float = 0.0):
        super().__init__()
        self.kind = kind
        self.ssim = SSIM()
        self.smooth = GaussianBlur(sigma)

    def forward(self, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.kind == "ssim":
            err = (1.0 - self.ssim(recon * STD + MEAN, target * STD + MEAN)) * 0.5
        else:
            err = ((recon - target) * STD).square()
        return self.smooth(err.mean(dim=1, keepdim=True))


def to_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """(N,3,H,W) → (N,channels,H,W): the channel mean when channels == 1."""
    return x.mean(dim=1, keepdim=True) if channels == 1 else x


def reconstruction_loss(recon: torch.Tensor, target: torch.Tensor, ssim: SSIM, ssim_weight: float) -> torch.Tensor:
    """MSE on [0,1] pixels, plus ``ssim_weight`` · mean(1 − SSIM) when > 0."""
    loss = ((recon.float() - target.float()) * STD).square().mean()
    if ssim_weight > 0:
        loss = loss + ssim_weight * (1.0 - ssim(recon.float() * STD + MEAN, target.float() * STD + MEAN)).mean()
    return loss


def load_tensor(paths: Sequence[Path], spec: InputSpec) -> torch.Tensor:
    """All images, preprocessed exactly as the runtime does → (N,3,H,W) float32."""
    from ..runtime.preprocess import preprocess, read_image

    frames = []
    for start in range(0, len(paths), 256):
        frames.append(preprocess([read_image(p) for p in paths[start:start + 256]], spec))
    return torch.from_numpy(np.concatenate(frames)) if frames else torch.zeros(0, 3, spec.height, spec.width)


def check_int(owner: str, name: str, value: Any, low: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InputError(f"{owner}: {name} {value!r}: expected an integer >= {low}")


def load_weights(module: torch.nn.Module, path: Path) -> torch.nn.Module:
    """Strictly load a ``.safetensors`` state dict into ``module`` (ArtifactError naming the file)."""
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
        module.load_state_dict(state, strict=True)
    except (OSError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ArtifactError(f"{path}: weights do not fit the architecture in metadata.json ({first}); "
                            "re-export the artifact") from exc
    return module


class TrainedWeights:
    """The artifact side of a detector whose graph carries trained weights: ``weights.safetensors`` (hashed)
    and ``loss_curve.png`` (the training record). Subclasses set ``loss_title`` and return the tensors to
    save from ``trained_state()``; ``history`` stays None until ``fit`` has trained."""

    loss_title = "training loss"

    def _require_fitted(self) -> None:
        if self.history is None:
            raise InputError(f"{self.name} is not trained: call fit() first")

    def arrays(self) -> dict[str, np.ndarray]:
        self._require_fitted()
        return {}

    def trained_state(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def write_files(self, out: Path) -> list[str]:
        from safetensors.torch import save_file

        self._require_fitted()
        save_file(self.trained_state(), str(Path(out) / WEIGHTS), metadata={"detector": self.name})
        return [WEIGHTS]

    def write_training_record(self, out: Path) -> None:
        from .training import save_loss_curve

        self._require_fitted()
        save_loss_curve(self.history, Path(out) / LOSS_CURVE, title=f"{self.name}: {self.loss_title}")


def module_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A module's state dict as contiguous CPU tensors (what safetensors stores)."""
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


class ReconstructionDetector(TrainedWeights, Detector):
    """Base of the trained reconstruction detectors. Subclasses set ``name``, ``config_class`` and
    implement ``check_config``, ``architecture``, ``make_module`` and ``loss``. Their config dataclass
    carries the fields of ``TrainSettings`` plus image_size, channels, error_map, map_sigma, reduction."""

    output_names = ("error", "reconstruction")

    def __init__(self, config=None, progress: bool | None = None):
        self.config = config if config is not None else self.config_class()
        self._check_common()
        self.check_config()
        self.progress = progress
        torch.manual_seed(self.config.seed)
        self.module = self.make_module(self.architecture()).eval()
        self.history: History | None = None
        self.n_train = 0

    # --- hooks -------------------------------------------------------------------------------------
    @abstractmethod
    def check_config(self) -> None:
        """InputError naming the first bad detector-specific parameter."""

    @abstractmethod
    def architecture(self) -> dict[str, Any]:
        """JSON-able description from which ``make_module`` rebuilds the module (weights aside)."""

    @classmethod
    @abstractmethod
    def make_module(cls, arch: dict[str, Any]) -> torch.nn.Module:
        """A fresh module; forward(image (N,3,H,W)) → (error (N,1,H,W), reconstruction (N,C,H,W))."""

    @abstractmethod
    def loss(self, module: torch.nn.Module, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Scalar training loss of one batch (N,3,H,W)."""

    # --- shared ------------------------------------------------------------------------------------
    def _check_common(self) -> None:
        cfg, owner = self.config, self.name
        check_int(owner, "image_size", cfg.image_size, 8)
        if cfg.channels not in (1, 3) or isinstance(cfg.channels, bool):
            raise InputError(f"{owner}: channels {cfg.channels!r}: expected 1 (gray) or 3 (colour)")
        if cfg.error_map not in ERROR_MAPS:
            raise InputError(f"{owner}: error_map '{cfg.error_map}': expected one of {', '.join(ERROR_MAPS)}")
        if not isinstance(cfg.map_sigma, (int, float)) or not cfg.map_sigma >= 0:
            raise InputError(f"{owner}: map_sigma {cfg.map_sigma!r}: expected a number >= 0 (0 = no smoothing)")
        if not isinstance(cfg.reduction, dict) or cfg.reduction.get("name") not in REDUCTIONS:
            raise InputError(f"{owner}: reduction {cfg.reduction!r}: expected {{'name': one of {', '.join(REDUCTIONS)}}}")
        self.settings().check(owner)

    def settings(self) -> TrainSettings:
        names = {f.name for f in fields(TrainSettings)}
        return TrainSettings(**{k: v for k, v in asdict(self.config).items() if k in names})

    def input_spec(self) -> InputSpec:
        size = self.config.image_size
        return InputSpec(name="image", height=size, width=size, mean=(MEAN,) * 3, std=(STD,) * 3)

    def fit(self, train_paths: Sequence[Path]) -> "ReconstructionDetector":
        if len(train_paths) == 0:
            raise InputError(f"no training images: {self.name} needs at least one good image")
        data = load_tensor(list(train_paths), self.input_spec())
        self.n_train = len(data)
        self.history = train(self.module, data, self.loss, self.settings(), self.progress, desc=self.name)
        self.module.eval()
        return self

    def graph(self) -> torch.nn.Module:
        return self.module

    def trained_state(self) -> dict[str, torch.Tensor]:
        return module_state(self.module)

    def model_block(self) -> dict[str, Any]:
        return {"architecture": self.architecture(), "weights": WEIGHTS}

    def metadata_blocks(self) -> dict[str, Any]:
        self._require_fitted()
        cfg = self.config
        size, c = cfg.image_size, cfg.channels
        params = int(sum(p.numel() for p in self.module.parameters()))
        return {
            "input": self.input_spec(),
            "model": {**self.model_block(), "parameters": params,
                      "fit": {**asdict(cfg), "n_train": self.n_train, "history": self.history.summary()}},
            "outputs": {"names": list(self.output_names), "error": {"shape": ["N", 1, size, size], "stride": 1},
                        "reconstruction": {"shape": ["N", c, size, size]}},
            "scoring": {"kind": "reconstruction", "placement": "host", "error_map": cfg.error_map,
                        "map_sigma": cfg.map_sigma},
            "postprocess": {"blur_sigma": 0.0, "reduction": cfg.reduction},
        }

    @classmethod
    def build_graph(cls, model_block: dict[str, Any], artifact=None) -> torch.nn.Module:
        if artifact is None:
            raise ArtifactError(f"{cls.name}: the trained weights live in the artifact's {WEIGHTS}; "
                                "pass the artifact to build_graph")
        module = cls.make_module(model_block["architecture"])
        return load_weights(module, artifact.path(model_block.get("weights", WEIGHTS))).eval()
