"""Shared training loop for the trained detectors (autoencoder, masked autoencoder).

``train(model, data, loss_fn, settings)`` runs AdamW with a linear warm-up then a cosine decay, over
shuffled mini-batches of ``data`` (N,3,H,W) float32 held in memory, seeded (a ``torch.Generator`` for
the order and for whatever randomness ``loss_fn(model, batch, generator)`` needs, e.g. MAE masks), with
a tqdm progress bar, and returns a ``History`` (loss per step and per epoch, learning rate, seconds).

Mixed precision (``amp``): ``fp32``, ``bf16`` (autocast), or ``auto``: bf16 autocast on CUDA; on CPU a
short race (forward + backward of one batch, fp32 vs bf16, gradients discarded) and bf16 only if it
is faster — on CPUs without native bf16 (no AMX / AVX512-BF16) autocast is slower, so it is measured
rather than assumed. The race result is kept in ``History.amp_race_ms``.
``save_loss_curve(history, png)`` plots the curve with matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import InputError

AMP_MODES = ("auto", "fp32", "bf16")

LossFn = Callable[[torch.nn.Module, torch.Tensor, torch.Generator], torch.Tensor]


@dataclass
class TrainSettings:
    epochs: int = 30
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05  # of all steps, linear from 0, then cosine to 0
    amp: str = "auto"
    device: str = "auto"  # auto (cuda if available) | cpu | cuda
    threads: int | None = None  # torch CPU threads while training; None: leave torch's setting
    seed: int = 0

    def check(self, owner: str) -> None:
        """InputError naming the first bad setting."""
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{owner}: {name} {value!r}: expected a positive integer")
        if not isinstance(self.lr, (int, float)) or not self.lr > 0:
            raise InputError(f"{owner}: lr {self.lr!r}: expected a positive number")
        if not isinstance(self.weight_decay, (int, float)) or not self.weight_decay >= 0:
            raise InputError(f"{owner}: weight_decay {self.weight_decay!r}: expected a number >= 0")
        if not isinstance(self.warmup_fraction, (int, float)) or not 0 <= self.warmup_fraction < 1:
            raise InputError(f"{owner}: warmup_fraction {self.warmup_fraction!r}: expected a value in [0, 1)")
        if self.amp not in AMP_MODES:
            raise InputError(f"{owner}: amp '{self.amp}': expected one of {', '.join(AMP_MODES)}")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise InputError(f"{owner}: threads {self.threads!r}: expected a positive integer or None")
        if self.device not in ("auto", "cpu", "cuda"):
            raise InputError(f"{owner}: device '{self.device}': expected auto, cpu or cuda")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise InputError(f"{owner}: device cuda: no CUDA device visible to torch; use device=cpu")


@dataclass
class History:
    step_loss: list[float] = field(default_factory=list)
    epoch_loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    seconds: float = 0.0
    amp: str = "fp32"
    amp_race_ms: dict[str, float] = field(default_factory=dict)
    device: str = "cpu"

    def summary(self) -> dict[str, object]:
        """Small JSON-able record for metadata (no per-step lists)."""
        return {"epochs": len(self.epoch_loss), "steps": len(self.step_loss), "seconds": round(self.seconds, 2),
                "first_epoch_loss": self.epoch_loss[0] if self.epoch_loss else None,
                "final_epoch_loss": self.epoch_loss[-1] if self.epoch_loss else None,
                "amp": self.amp, "amp_race_ms": {k: round(v, 2) for k, v in self.amp_race_ms.items()},
                "device": self.device}

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def autocast(device: torch.device, amp: str):
    """The autocast context for ``amp`` ('fp32' → a no-op)."""
    if amp == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def choose_amp(model: torch.nn.Module, batch: torch.Tensor, loss_fn: LossFn, settings: TrainSettings,
               device: torch.device, repeats: int = 2) -> tuple[str, dict[str, float]]:
    """Resolve ``settings.amp`` → ('fp32'|'bf16', race ms). 'auto' on CPU times forward+backward."""
    if settings.amp != "auto":
        return settings.amp, {}
    if device.type == "cuda":
        return ("bf16" if torch.cuda.is_bf16_supported() else "fp32"), {}
    times: dict[str, float] = {}
    for amp in ("fp32", "bf16"):
        gen = torch.Generator().manual_seed(settings.seed)
        best = math.inf
        for _ in range(repeats + 1):  # the first call warms up
            start = time.perf_counter()
            with autocast(device, amp):
                loss = loss_fn(model, batch, gen)
            loss.float().backward()
            best = min(best, (time.perf_counter() - start) * 1e3)
        times[amp] = best
    model.zero_grad(set_to_none=True)
    return min(times, key=times.get), times


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine from 1 to 0 at ``total``."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def train(model: torch.nn.Module, data: torch.Tensor, loss_fn: LossFn, settings: TrainSettings,
          progress: bool | None = None, desc: str = "train") -> History:
    """Train ``model`` in place on ``data`` (N,…) → History. The model is left in eval mode on the CPU."""
    settings.check(desc)
    previous = torch.get_num_threads()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    try:
        return _train(model, data, loss_fn, settings, progress, desc)
    finally:
        torch.set_num_threads(previous)


def _train(model: torch.nn.Module, data: torch.Tensor, loss_fn: LossFn, settings: TrainSettings,
           progress: bool | None, desc: str) -> History:
    from tqdm import tqdm

    if len(data) == 0:
        raise InputError(f"{desc}: no training images")
    device = resolve_device(settings.device)
    torch.manual_seed(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    model.to(device).train()
    data = data.to(device)
    batch_size = min(settings.batch_size, len(data))
    per_epoch = max(1, len(data) // batch_size)  # drop the last incomplete batch: equal-sized steps
    total = per_epoch * settings.epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    warmup = int(round(settings.warmup_fraction * total))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, warmup))
    amp, race = choose_amp(model, data[:batch_size], loss_fn, settings, device)
    history = History(amp=amp, amp_race_ms=race, device=device.type)
    disable = None if progress is None else not progress
    start = time.perf_counter()
    with tqdm(total=total, desc=desc, disable=disable, leave=False, unit="step") as bar:
        for _ in range(settings.epochs):
            order = torch.randperm(len(data), generator=gen).to(device)
            losses = []
            for i in range(per_epoch):
                batch = data[order[i * batch_size:(i + 1) * batch_size]]
                with autocast(device, amp):
                    loss = loss_fn(model, batch, gen)
                optimizer.zero_grad(set_to_none=True)
                loss.float().backward()
                optimizer.step()
                history.lr.append(float(schedule.get_last_lr()[0]))
                schedule.step()
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise InputError(f"{desc}: the loss became {value} at step {len(history.step_loss)}; "
                                     "lower lr or use amp=fp32")
                losses.append(value)
                history.step_loss.append(value)
                bar.update(1)
                bar.set_postfix(loss=f"{value:.4g}")
            history.epoch_loss.append(float(np.mean(losses)))
    history.seconds = time.perf_counter() - start
    model.cpu().eval()
    return history


def save_loss_curve(history: History, png: str | Path, title: str = "training loss") -> Path:
    """Loss per step (thin) and per epoch (dots, at each epoch's last step) on a log axis → ``png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    steps = np.arange(1, len(history.step_loss) + 1)
    ax.plot(steps, history.step_loss, lw=0.6, alpha=0.5, label="step")
    if history.epoch_loss:
        per = len(history.step_loss) // len(history.epoch_loss)
        ax.plot(np.arange(1, len(history.epoch_loss) + 1) * per, history.epoch_loss, "o-", ms=3, label="epoch mean")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"{title} ({history.seconds:.0f} s, {history.amp}, {history.device})")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return png
