"""timm vision transformers as patch-feature extractors: DINOv2, MAE, Swin (and any timm ViT/Swin).

``ViTSpec`` (JSON-safe, stored in metadata) names the model, the blocks whose tokens are taken, the
weights and the input size; ``build_vit(spec)`` → ``ViTPatchFeatures`` whose forward maps a normalised
(N,3,S,S) batch to one (N,D,h,w) grid: the patch tokens of each chosen block (class and register
tokens dropped; timm ``forward_intermediates(output_fmt="NCHW")``), optionally through the final norm,
coarser grids (Swin stages) bilinearly upsampled to the finest, concatenated (D = ΣCᵢ). Blocks after
the last chosen one and the head are pruned (edge latency).

Input size: ``image_size`` must be a multiple of the patch size; the model is built with
``img_size=image_size`` so the absolute position embeddings are interpolated once, when the weights
are loaded (timm's checkpoint filter, bicubic), and the exported graph holds a fixed table — no
interpolation op in the ONNX graph. MAE (``vit_base_patch16_224.mae``): timm's encoder has no masking;
at inference every patch is kept (1 + (S/16)² tokens enter the blocks).

Weights: ``hub`` (timm's pretrained download, for users online), ``none`` (random init seeded with
``RANDOM_INIT_SEED``, reproducible: tests, no hub here) or a file path (``.safetensors``, or ``.pth``/``.pt`` read with ``torch.load(weights_only=True)``),
passed through the model family's timm checkpoint filter (DINOv2/MAE/Swin key layouts, position
embedding resampling) and loaded strictly.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import InputError
from .backbones import IMAGENET_MEAN, IMAGENET_STD, file_sha256, load_state, read_state_dict, weights_path

VIT_MODELS = ("vit_small_patch14_dinov2", "vit_base_patch14_dinov2", "vit_base_patch16_224.mae",
              "swin_tiny_patch4_window7_224")
"""The models this module is written and tested for (random init); other timm ViT/Swin names work too."""

RANDOM_INIT_SEED = 0
"""Weights ``none``: the random init is drawn from this seed, so a rebuild from metadata is identical."""


@dataclass(frozen=True)
class ViTSpec:
    name: str = "vit_small_patch14_dinov2"
    blocks: tuple[int, ...] = (-1,)  # block (ViT) or stage (Swin) indices; negative counts from the end
    weights: str = "hub"
    image_size: int = 224
    norm: bool = True  # apply the model's final norm to every taken block
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # extra timm kwargs, e.g. {"depth": 4}
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    weights_sha256: str | None = None

    def with_weights_hash(self) -> "ViTSpec":
        if self.weights in ("none", "hub"):
            return self
        return ViTSpec(**{**asdict(self), "weights_sha256": file_sha256(weights_path(self.weights))})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {**d, "blocks": list(self.blocks), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ViTSpec":
        return cls(name=d["name"], blocks=tuple(d["blocks"]), weights=d["weights"], image_size=int(d["image_size"]),
                   norm=bool(d["norm"]), model_kwargs=dict(d.get("model_kwargs") or {}), mean=tuple(d["mean"]),
                   std=tuple(d["std"]), weights_sha256=d.get("weights_sha256"))


class ViTPatchFeatures(torch.nn.Module):
    """(N,3,S,S) → (N,D,h,w): patch tokens of the chosen blocks as grids, concatenated at the finest grid."""

    def __init__(self, model: torch.nn.Module, indices: list[int], norm: bool):
        super().__init__()
        self.model = model
        self.indices = list(indices)
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.model.forward_intermediates(x, indices=self.indices, norm=self.norm, output_fmt="NCHW",
                                                intermediates_only=True)
        size = maps[0].shape[-2:]
        maps = [maps[0]] + [m if m.shape[-2:] == size else
                            F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps[1:]]
        return torch.cat(maps, dim=1) if len(maps) > 1 else maps[0]


def patch_size(model: torch.nn.Module) -> int:
    ps = model.patch_embed.patch_size
    return int(ps[0] if isinstance(ps, (tuple, list)) else ps)


def _create(spec: ViTSpec, pretrained: bool) -> torch.nn.Module:
    import timm

    try:
        # Seeded: weights "none" must give the same random init when the reference rebuilds the graph.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            return timm.create_model(spec.name, pretrained=pretrained, img_size=spec.image_size, num_classes=0,
                                     **spec.model_kwargs)
    except OSError as exc:  # hub download offline / unreachable (huggingface_hub errors are OSErrors)
        if not pretrained:
            raise
        raise InputError(f"vit: cannot download the pretrained '{spec.name}' weights from the model hub "
                         f"({type(exc).__name__}); offline, pass --param weights=PATH (.safetensors/.pth) "
                         "or --param weights=none (random init)") from exc
    except (RuntimeError, TypeError, ValueError, AssertionError) as exc:
        raise InputError(f"timm model '{spec.name}' at {spec.image_size} px with {spec.model_kwargs or 'no extra kwargs'}: "
                         f"{str(exc)[:160]}") from exc


def _checkpoint_filter(model: torch.nn.Module):
    module = sys.modules.get(type(model).__module__)
    return getattr(module, "checkpoint_filter_fn", None)


def load_vit_weights(model: torch.nn.Module, weights: str) -> None:
    """A .safetensors/.pth state dict → ``model`` (through the family's timm filter), strictly."""
    state = read_state_dict(weights_path(weights))
    filt = _checkpoint_filter(model)
    if filt is not None:
        state = filt(state, model)
    load_state(model, state, weights)  # the same strict key + shape checks as the CNN backbones


def build_vit(spec: ViTSpec) -> ViTPatchFeatures:
    """A frozen, eval-mode, pruned patch-feature extractor for ``spec`` with its weights loaded."""
    if isinstance(spec.image_size, bool) or not isinstance(spec.image_size, int) or spec.image_size < 1:
        raise InputError(f"image_size {spec.image_size!r}: expected a positive integer")
    if spec.weights not in ("none", "hub"):
        weights_path(spec.weights)  # a clear InputError for a missing file, before building the model
    model = _create(spec, pretrained=spec.weights == "hub")
    if not hasattr(model, "forward_intermediates") or not hasattr(model, "patch_embed"):
        raise InputError(f"timm model '{spec.name}': not a ViT/Swin with forward_intermediates; use e.g. "
                         f"{', '.join(VIT_MODELS)}")
    patch = patch_size(model)
    if spec.image_size % patch:
        lower = spec.image_size // patch * patch
        raise InputError(f"image_size {spec.image_size}: expected a multiple of the patch size {patch} "
                         f"(e.g. {lower} or {lower + patch})")
    if spec.weights not in ("none", "hub"):
        load_vit_weights(model, spec.weights)
    depth = len(model.blocks) if hasattr(model, "blocks") else len(model.layers)
    if not spec.blocks or any(not -depth <= int(b) < depth for b in spec.blocks):
        raise InputError(f"blocks {list(spec.blocks)}: expected indices in [-{depth}, {depth - 1}] "
                         f"({spec.name} has {depth} {'blocks' if hasattr(model, 'blocks') else 'stages'})")
    indices = sorted({int(b) % depth for b in spec.blocks})
    model.prune_intermediate_layers(indices, prune_norm=not spec.norm, prune_head=True)
    extractor = ViTPatchFeatures(model, indices, spec.norm).eval()
    for p in extractor.parameters():
        p.requires_grad_(False)
    return extractor


def spec_for_model(name: str, **kwargs: Any) -> ViTSpec:
    """A spec with the model's own normalisation (timm pretrained_cfg; ImageNet's otherwise)."""
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:  # unknown tag: keep ImageNet's
        cfg = None
    mean = tuple(getattr(cfg, "mean", None) or IMAGENET_MEAN)
    std = tuple(getattr(cfg, "std", None) or IMAGENET_STD)
    return ViTSpec(name=name, mean=mean, std=std, **kwargs)


def token_count(extractor: ViTPatchFeatures, image_size: int) -> int:
    """Tokens entering the first block for one (1,3,S,S) image (prefix + patch tokens): a probe for tests."""
    seen: list[int] = []
    first = extractor.model.blocks[0] if hasattr(extractor.model, "blocks") else extractor.model.layers[0]
    # ViT blocks take (N, tokens, C); Swin stages take (N, h, w, C)
    handle = first.register_forward_pre_hook(lambda mod, args: seen.append(int(args[0].shape[1:-1].numel())))
    try:
        with torch.no_grad():
            extractor(torch.zeros(1, 3, image_size, image_size))
    finally:
        handle.remove()
    return seen[0]
