"""Teacher–student detector in the EfficientAD spirit (Batzner et al., 2024), on a frozen EfficientNet-Lite.

Teacher (frozen): the backbone stages (``backbone.stages``, default Lite0 blocks 2 + 4), each averaged
over an ``aggregation``×``aggregation`` neighbourhood, the coarser ones bilinearly resampled to the
finest stage's grid (stride 8: 28×28 at 224 px), concatenated (D = ΣCᵢ = 152) and channel-normalised
with the training images' per-channel mean / std: t (N,D,h,w). Only the stem and the blocks up to the
last stage run.
Student (trained): a small PDN-like CNN — ``len(widths)`` 4×4 stride-2 convs (ReLU), ``depth`` 3×3 convs
(ReLU) at the teacher's grid, a 1×1 conv to D channels: s (N,D,h,w). Its input is the teacher's own
early map ``input_stage`` (default block 1: stride 4, 24 channels, so one stride-2 stage reaches stride
8), which the graph computes anyway — the student adds ≈ 50 MFLOP to the teacher's pass and trains 4×
faster than on pixels — or, with ``input_stage`` None, the image (PDN proper: stride 2^len(widths) = 8).
It regresses t on good images with EfficientAD's hard-feature loss: mean of the squared errors
(t − s)² at or above their ``hard_quantile`` quantile within the batch (0 = plain MSE).
Map: d = mean over channels of (t − s)² (N,1,h,w), then EfficientAD's quantile normalisation from
held-out good images (``val_fraction`` of the fit images, never trained on): the ``q_a`` (0.9) and
``q_b`` (0.995) quantiles of their map values go to 0 and 0.1: d' = 0.1·(d − a)/(b − a). a, b are
constants of the graph (recorded in the model block), not thresholds.
Graph: image (N,3,H,W) → ``error`` (N,1,h,w) → the ``reconstruction`` (pass-through) head; image
score = ``reduction`` of the map (max / top-fraction mean), map = upsampled + ``blur_sigma``.
Artifact: ``model.onnx`` (teacher up to its last stage + student + distance + normalisation, one graph),
``weights.safetensors`` (student weights, teacher channel mean / std, a / b; no pickle); the teacher's
weights come from the backbone spec (its file's sha256 checked) when ``build_graph`` rebuilds the reference.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..artifact import InputSpec
from ..errors import ArtifactError, InputError
from .backbones import BackboneSpec, build_backbone
from .detector import Detector
from .reconstruction import REDUCTIONS, WEIGHTS, TrainedWeights, check_int, load_tensor
from .training import History, TrainSettings, train

MIN_VAL = 2
"""Held-out good images needed for the map quantiles (fewer: the fit is refused with how to fix it)."""


class TeacherFeatures(torch.nn.Module):
    """Normalised image (N,3,H,W) → (student input, raw teacher features (N,D,h,w)).

    ``extractor`` runs the backbone stages ``[input stage] + target stages``; the target stages are
    averaged over ``aggregation``² cells, resampled to the finest target stage's grid and concatenated;
    ``forward`` channel-normalises them with the training ``mean`` / ``std`` buffers (1,D,1,1). The student
    input is the input stage's map (student on teacher features: the stem and early blocks are shared at
    run time) or, with ``input_stage`` None, the image itself.
    """

    def __init__(self, extractor: torch.nn.Module, has_input_stage: bool, aggregation: int = 1):
        super().__init__()
        self.extractor = extractor
        self.has_input_stage = bool(has_input_stage)
        self.aggregation = int(aggregation)
        first = 1 if self.has_input_stage else 0
        d = sum(extractor.channels[first:])
        self.input_channels = extractor.channels[0] if self.has_input_stage else 3
        self.input_stride = extractor.strides[0] if self.has_input_stage else 1
        self.target_stride = extractor.strides[first]
        self.register_buffer("mean", torch.zeros(1, d, 1, 1))
        self.register_buffer("std", torch.ones(1, d, 1, 1))

    @property
    def channels(self) -> int:
        return int(self.mean.shape[1])

    def raw(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(student input, un-normalised teacher features (N,D,h,w))."""
        maps = self.extractor(x)
        if self.has_input_stage:
            inp, maps = maps[0], maps[1:]
        else:
            inp = x
        k = self.aggregation
        if k > 1:
            maps = [F.avg_pool2d(m, k, stride=1, padding=k // 2, count_include_pad=False) for m in maps]
        size = maps[0].shape[-2:]
        maps = [maps[0]] + [F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps[1:]]
        return inp, torch.cat(maps, dim=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inp, raw = self.raw(x)
        return inp, (raw - self.mean) / self.std


class Student(torch.nn.Module):
    """PDN-like: (N,in_channels,H,W) → (N,out,H/2^len(widths),W/2^len(widths)); convs and ReLUs only.
    Each stride-2 stage is a 4×4 conv (padding 1), then ``depth`` 3×3 convs, then a 1×1 conv to ``out``."""

    def __init__(self, in_channels: int, out_channels: int, widths: Sequence[int] = (32, 64, 128), depth: int = 1):
        super().__init__()
        layers, c_in = [], int(in_channels)
        for w in widths:
            layers += [torch.nn.Conv2d(c_in, int(w), 4, stride=2, padding=1), torch.nn.ReLU()]
            c_in = int(w)
        for _ in range(int(depth)):
            layers += [torch.nn.Conv2d(c_in, c_in, 3, padding=1), torch.nn.ReLU()]
        layers.append(torch.nn.Conv2d(c_in, int(out_channels), 1))
        self.net = torch.nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TeacherStudentGraph(torch.nn.Module):
    """Image (N,3,H,W) → ``error`` (N,1,h,w): 0.1·(mean_c (t − s)² − a)/(b − a), a / b the map quantiles."""

    def __init__(self, teacher: TeacherFeatures, student: Student):
        super().__init__()
        self.teacher, self.student = teacher, student
        self.register_buffer("q_low", torch.zeros(()))
        self.register_buffer("q_high", torch.ones(()))

    def distance(self, x: torch.Tensor) -> torch.Tensor:
        """Raw map: mean over channels of the squared teacher–student difference (N,1,h,w)."""
        inp, target = self.teacher(x)
        return (target - self.student(inp)).square().mean(dim=1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.distance(x) - self.q_low) * (0.1 / (self.q_high - self.q_low))


def hard_feature_loss(target: torch.Tensor, pred: torch.Tensor, quantile: float) -> torch.Tensor:
    """EfficientAD's L_hard: mean of the squared errors at or above their ``quantile`` (0: all of them).
    The quantile is taken with ``kthvalue`` (exact, deterministic) over the whole batch."""
    err = (target - pred).square()
    if quantile <= 0:
        return err.mean()
    flat = err.flatten()
    k = min(flat.numel(), max(1, int(math.floor(quantile * (flat.numel() - 1))) + 1))
    hard = flat.kthvalue(k).values.detach()
    return flat[flat >= hard].mean()


@dataclass
class TeacherStudentConfig:
    backbone: dict[str, Any] = field(default_factory=lambda: BackboneSpec().to_dict())
    image_size: int = 224
    aggregation: int = 1  # teacher features averaged over k×k (PatchCore uses 3)
    # the student's input: a backbone block before the target stages (1: stride 4, 24 ch), or None: the image
    input_stage: int | None = 1
    widths: list = field(default_factory=lambda: [64])  # student stride-2 stages: input stride · 2^len = 8
    depth: int = 1  # student 3×3 convs at the teacher's grid
    hard_quantile: float = 0.999  # EfficientAD's hard-feature loss; 0 = plain MSE
    val_fraction: float = 0.1  # of the fit images: held out for the map quantiles
    q_a: float = 0.9
    q_b: float = 0.995
    reduction: dict[str, Any] = field(default_factory=lambda: {"name": "max"})
    blur_sigma: float = 4.0
    flip_augment: bool = False  # also train on the h / v / hv flips (teacher features of each flip)
    # chosen on held-out good ELPV mono cells + drawn defects (benchmarks/teacher_student.py --select)
    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-5
    warmup_fraction: float = 0.05
    amp: str = "auto"  # bf16 autocast where measured faster (AVX512-BF16: 3.6× per step), else fp32
    device: str = "cpu"
    threads: int | None = None
    seed: int = 0


class TeacherStudent(TrainedWeights, Detector):
    name = "teacher_student"
    loss_title = "hard-feature loss"
    output_names = ("error",)
    config_class = TeacherStudentConfig

    def __init__(self, config: TeacherStudentConfig | None = None, progress: bool | None = None):
        self.config = cfg = config or TeacherStudentConfig()
        self._check(cfg)
        self.progress = progress
        self.spec = BackboneSpec.from_dict(cfg.backbone).with_weights_hash()
        self.settings().check(self.name)
        torch.manual_seed(cfg.seed)
        self.module = self.make_graph(self.architecture())
        self.history: History | None = None
        self.n_train = self.n_val = 0
        self.fit_seconds: dict[str, float] = {}

    # --- configuration -----------------------------------------------------------------------------
    def _check(self, cfg: TeacherStudentConfig) -> None:
        owner = self.name
        check_int(owner, "image_size", cfg.image_size, 16)
        check_int(owner, "aggregation", cfg.aggregation)
        check_int(owner, "depth", cfg.depth, 0)
        if not isinstance(cfg.widths, (list, tuple)) or not cfg.widths:
            raise InputError(f"{owner}: widths {cfg.widths!r}: expected a list of channel counts, e.g. [32, 64, 128]")
        for w in cfg.widths:
            check_int(owner, "widths entry", w)
        for name, low, high in (("hard_quantile", 0.0, 1.0), ("val_fraction", 0.0, 0.9)):
            value = getattr(cfg, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value < high:
                raise InputError(f"{owner}: {name} {value!r}: expected a number in [{low}, {high})")
        if not (isinstance(cfg.q_a, (int, float)) and isinstance(cfg.q_b, (int, float)) and 0 <= cfg.q_a < cfg.q_b <= 1):
            raise InputError(f"{owner}: q_a {cfg.q_a!r} / q_b {cfg.q_b!r}: expected 0 <= q_a < q_b <= 1 (EfficientAD: 0.9, 0.995)")
        if not isinstance(cfg.reduction, dict) or cfg.reduction.get("name") not in REDUCTIONS:
            raise InputError(f"{owner}: reduction {cfg.reduction!r}: expected {{'name': one of {', '.join(REDUCTIONS)}}}")
        if not isinstance(cfg.blur_sigma, (int, float)) or not cfg.blur_sigma >= 0:
            raise InputError(f"{owner}: blur_sigma {cfg.blur_sigma!r}: expected a number >= 0")
        if not isinstance(cfg.flip_augment, bool):
            raise InputError(f"{owner}: flip_augment {cfg.flip_augment!r}: expected true or false")

    def settings(self) -> TrainSettings:
        names = set(TrainSettings.__dataclass_fields__)
        return TrainSettings(**{k: v for k, v in asdict(self.config).items() if k in names})

    def architecture(self) -> dict[str, Any]:
        cfg = self.config
        return {"backbone": self.spec.to_dict(), "aggregation": int(cfg.aggregation), "input_stage": cfg.input_stage,
                "widths": [int(w) for w in cfg.widths], "depth": int(cfg.depth), "image_size": int(cfg.image_size)}

    @classmethod
    def make_graph(cls, arch: dict[str, Any]) -> TeacherStudentGraph:
        """A fresh graph for ``arch`` (teacher weights from the backbone spec, student randomly initialised);
        InputError when the student's stride does not land on the teacher's grid."""
        spec = BackboneSpec.from_dict(arch["backbone"])
        first = arch.get("input_stage")
        if first is not None:
            if isinstance(first, bool) or not isinstance(first, int) or not 0 <= first < min(spec.stages):
                raise InputError(f"teacher_student: input_stage {first!r}: expected a block index below the target "
                                 f"stages {list(spec.stages)} (e.g. 1), or None for the image")
            spec = BackboneSpec.from_dict({**spec.to_dict(), "stages": [first, *spec.stages]})
        teacher = TeacherFeatures(build_backbone(spec), first is not None, arch["aggregation"])
        student = Student(teacher.input_channels, teacher.channels, arch["widths"], arch["depth"])
        graph = TeacherStudentGraph(teacher, student).eval()
        size = int(arch["image_size"])
        with torch.no_grad():
            inp, target = teacher.raw(torch.zeros(1, 3, size, size))
            t_shape, s_shape = target.shape[-2:], student(inp).shape[-2:]
        if t_shape != s_shape:
            raise InputError(f"teacher_student: the student's grid {tuple(s_shape)} differs from the teacher's "
                             f"{tuple(t_shape)} at {size} px; use input stride · 2^len(widths) = the teacher's "
                             f"stride ({teacher.input_stride} · 2^{len(arch['widths'])} vs {teacher.target_stride}) "
                             "and an image_size divisible by it")
        for p in graph.teacher.parameters():
            p.requires_grad_(False)
        return graph

    def input_spec(self) -> InputSpec:
        size = self.config.image_size
        return InputSpec(name="image", height=size, width=size, mean=tuple(self.spec.mean), std=tuple(self.spec.std))

    # --- fit ---------------------------------------------------------------------------------------
    def split(self, paths: Sequence[Path]) -> tuple[list[Path], list[Path]]:
        """Seeded (train, val) split of the fit images; val sets the map quantiles, never trained on."""
        paths = list(paths)
        n_val = int(round(self.config.val_fraction * len(paths)))
        if self.config.val_fraction > 0:
            n_val = max(n_val, MIN_VAL)
        if len(paths) - n_val < 1 or (self.config.val_fraction > 0 and n_val < MIN_VAL):
            raise InputError(f"teacher_student: {len(paths)} good images are too few to hold out {n_val} for the map "
                             f"quantiles and train on the rest; give at least {MIN_VAL + 1} or set val_fraction=0")
        order = np.random.default_rng([self.config.seed, 7]).permutation(len(paths))
        val = sorted(order[:n_val])
        fit = sorted(order[n_val:])
        return [paths[i] for i in fit], [paths[i] for i in val]

    @torch.inference_mode()
    def _teacher_raw(self, paths: Sequence[Path], batch: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
        """(student inputs, raw teacher features) of ``paths`` (and of their flips with ``flip_augment``)."""
        from .features import batches
        from ..progress import steps

        teacher, spec = self.module.teacher, self.input_spec()
        inputs, targets = [], []
        total = (len(paths) + batch - 1) // batch
        for images in steps(batches(list(paths), spec, batch), total, "teacher", self.progress):
            variants = [images]
            if self.config.flip_augment:
                variants += [images.flip(-1), images.flip(-2), images.flip(-1, -2)]
            for v in variants:
                inp, raw = teacher.raw(v)
                inputs.append(inp.clone())
                targets.append(raw)
        return torch.cat(inputs), torch.cat(targets)

    def fit(self, train_paths: Sequence[Path]) -> "TeacherStudent":
        if len(train_paths) == 0:
            raise InputError("no training images: teacher_student needs at least one good image")
        cfg = self.config
        fit_paths, val_paths = self.split(train_paths)
        start = time.perf_counter()
        inputs, raw = self._teacher_raw(fit_paths)
        teacher = self.module.teacher
        teacher.mean.copy_(raw.mean(dim=(0, 2, 3), keepdim=True))
        teacher.std.copy_(raw.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6))
        targets = (raw - teacher.mean) / teacher.std
        self.fit_seconds["teacher"] = time.perf_counter() - start
        q = float(cfg.hard_quantile)

        def loss(module: torch.nn.Module, index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
            return hard_feature_loss(targets[index], module(inputs[index]), q)

        del raw
        self.history = train(self.module.student, torch.arange(len(inputs)), loss, self.settings(), self.progress,
                             desc=self.name)
        self.module.eval()
        start = time.perf_counter()
        self._set_quantiles(val_paths if val_paths else fit_paths)
        self.fit_seconds["quantiles"] = time.perf_counter() - start
        self.n_train, self.n_val = len(fit_paths), len(val_paths)
        return self

    @torch.inference_mode()
    def _set_quantiles(self, paths: Sequence[Path]) -> None:
        """q_a / q_b quantiles of the raw map values of ``paths`` → the graph's normalisation constants."""
        images = load_tensor(list(paths), self.input_spec())
        maps = torch.cat([self.module.distance(images[i:i + 16]) for i in range(0, len(images), 16)])
        values = maps.flatten().double().numpy()
        low, high = np.quantile(values, [self.config.q_a, self.config.q_b])
        if not (np.isfinite(low) and np.isfinite(high)) or high <= low:
            high = low + max(abs(low), 1e-6)  # a degenerate (constant) map: keep the scale finite
        self.module.q_low.fill_(float(low))
        self.module.q_high.fill_(float(high))

    # --- export ------------------------------------------------------------------------------------
    def graph(self) -> TeacherStudentGraph:
        return self.module

    def trained_state(self) -> dict[str, torch.Tensor]:
        return trained_state(self.module)

    def metadata_blocks(self) -> dict[str, Any]:
        self._require_fitted()
        cfg = self.config
        size = cfg.image_size
        with torch.no_grad():
            h, w = self.module.teacher.raw(torch.zeros(1, 3, size, size))[1].shape[-2:]
        params = int(sum(p.numel() for p in self.module.student.parameters()))
        return {
            "input": self.input_spec(),
            "model": {"architecture": self.architecture(), "weights": WEIGHTS, "student_parameters": params,
                      "quantiles": {"q_a": cfg.q_a, "q_b": cfg.q_b, "a": float(self.module.q_low),
                                    "b": float(self.module.q_high), "n_val": self.n_val},
                      "fit": {**asdict(cfg), "n_train": self.n_train, "n_val": self.n_val,
                              "seconds": {k: round(v, 2) for k, v in self.fit_seconds.items()},
                              "history": self.history.summary()}},
            "outputs": {"names": list(self.output_names), "error": {"shape": ["N", 1, int(h), int(w)],
                                                                     "stride": size // int(h)}},
            "scoring": {"kind": "reconstruction", "placement": "host", "map": "teacher_student"},
            "postprocess": {"blur_sigma": float(cfg.blur_sigma), "reduction": cfg.reduction},
        }

    @classmethod
    def build_graph(cls, model_block: dict[str, Any], artifact=None) -> TeacherStudentGraph:
        if artifact is None:
            raise ArtifactError(f"{cls.name}: the trained student lives in the artifact's {WEIGHTS}; "
                                "pass the artifact to build_graph")
        graph = cls.make_graph(model_block["architecture"])
        return load_trained_state(graph, artifact.path(model_block.get("weights", WEIGHTS))).eval()


def trained_state(graph: TeacherStudentGraph) -> dict[str, torch.Tensor]:
    """What the artifact's weights file holds: the student, the teacher's channel mean / std, the quantiles
    (the frozen teacher's own weights come from the backbone spec)."""
    state = {f"student.{k}": v for k, v in graph.student.state_dict().items()}
    state.update({"teacher.mean": graph.teacher.mean, "teacher.std": graph.teacher.std,
                  "q_low": graph.q_low, "q_high": graph.q_high})
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def load_trained_state(graph: TeacherStudentGraph, path: Path) -> TeacherStudentGraph:
    """Copy a ``weights.safetensors`` (``trained_state`` layout) into ``graph``: the same keys and shapes
    exactly, else an ArtifactError naming the file."""
    from safetensors.torch import load_file

    expected = trained_state(graph)
    try:
        stored = load_file(str(path))
    except (OSError, RuntimeError, ValueError) as exc:
        raise ArtifactError(f"{path}: not a readable safetensors file ({exc}); re-export the artifact") from exc
    missing, unexpected = sorted(set(expected) - set(stored)), sorted(set(stored) - set(expected))
    wrong = [k for k in expected if k in stored and tuple(stored[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        raise ArtifactError(f"{path}: weights do not fit the architecture in metadata.json (missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]}, other shape {wrong[:3]}); re-export the artifact")
    with torch.no_grad():
        graph.student.load_state_dict({k[len("student."):]: v for k, v in stored.items() if k.startswith("student.")})
        graph.teacher.mean.copy_(stored["teacher.mean"])
        graph.teacher.std.copy_(stored["teacher.std"])
        graph.q_low.copy_(stored["q_low"])
        graph.q_high.copy_(stored["q_high"])
    return graph
