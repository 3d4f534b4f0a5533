"""The PyTorch reference: the same detector in eager torch, every stage — what parity is measured against.

It rebuilds the graph from the artifact's ``model`` block (no pickles), and runs its own torch
preprocessing (``F.interpolate``), torch scoring (``torch.cdist`` kNN, Mahalanobis with the full
Σ⁻¹ = L Lᵀ) and torch postprocessing (interpolate + Gaussian conv). torch is imported lazily: this
module is importable only where the ``export`` extra is installed, and the runtime never imports it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import BackendUnavailable, InputError
from .base import Backend, Stages


def _to_rgb_tensor(frame: np.ndarray):
    import torch

    if frame.dtype not in (np.uint8, np.uint16):
        raise InputError(f"frame dtype {frame.dtype}: expected uint8 or uint16 pixels")
    image = torch.from_numpy(frame.astype(np.float32))
    if frame.dtype == np.uint16:
        image = image * (255.0 / 65535.0)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = image[:, :, None].expand(-1, -1, 3)
    elif image.ndim == 3 and image.shape[2] in (3, 4):
        image = image[:, :, [2, 1, 0]]
    else:
        raise InputError(f"frame shape {tuple(frame.shape)}: expected (H,W) gray, (H,W,3) BGR or (H,W,4) BGRA")
    return image.permute(2, 0, 1)


class TorchReference(Backend):
    name = "torch"
    install_hint = "pip install 'anomedge[export]'  (the PyTorch reference needs torch and timm)"

    @classmethod
    def check_available(cls) -> None:
        try:
            import torch  # noqa: F401
            import timm  # noqa: F401
        except ImportError as exc:
            raise BackendUnavailable(f"the PyTorch reference needs torch and timm: {cls.install_hint}") from exc

    def __init__(self, artifact, device: str = "auto", **options: Any):
        super().__init__(artifact, device, **options)  # precision: fp32 only (runtime.precisions)
        self.threads = self.options.threads
        self.module = None

    def open(self) -> None:
        import torch

        from ...models.detector import get_detector

        if self.threads:
            torch.set_num_threads(self.threads)
        # device auto|cpu, or cuda[:N] for the network (scoring and postprocessing stay on the CPU).
        self.torch_device = torch.device("cpu" if self.device in ("auto", "cpu") else self.device)
        if self.torch_device.type == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable(f"torch device {self.device}: torch.cuda.is_available() is False here")
        meta = self.artifact.metadata
        self.module = get_detector(meta.detector).build_graph(meta.model, self.artifact).eval().to(self.torch_device)
        self.output_names = list(meta.outputs["names"])

    def _forward(self, batch):
        import torch

        with torch.inference_mode():
            out = self.module(batch.to(self.torch_device))
        out = out if isinstance(out, (tuple, list)) else (out,)
        return {name: value.cpu() for name, value in zip(self.output_names, out)}

    def _infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        import torch

        return {k: v.numpy() for k, v in self._forward(torch.from_numpy(batch)).items()}

    def stages(self) -> Stages:
        import torch
        import torch.nn.functional as F

        meta = self.artifact.metadata
        spec = meta.input
        mean = torch.tensor(spec.mean).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(spec.std).view(1, 3, 1, 1) * 255.0

        def preprocess(frames: list[np.ndarray]):
            out = []
            for frame in frames:
                image = _to_rgb_tensor(frame)[None]
                if tuple(image.shape[-2:]) != (spec.height, spec.width):
                    image = F.interpolate(image, size=(spec.height, spec.width), mode=spec.interpolation,
                                          align_corners=False, antialias=False)
                out.append(image)
            return (torch.cat(out) - mean) / std

        score = TORCH_HEADS[meta.scoring["kind"]](self.artifact)
        size = (spec.height, spec.width)
        sigma = float(meta.postprocess["blur_sigma"])
        reduction = dict(meta.postprocess["reduction"])

        def postprocess(patch_scores, mask=None):
            return _postprocess(patch_scores, mask, size, sigma, reduction)

        # a head that reduces and maps its own outputs (scoring.kind ensemble)
        postprocess = getattr(score, "postprocess", postprocess)
        return Stages(preprocess, self._forward, score, postprocess)


def _postprocess(patch_scores, mask, size: tuple[int, int], sigma: float, reduction: dict[str, Any]):
    """(N,h,w) patch scores → (image scores (N,), maps (N,H,W)). Under an ignore mask (``scoring.mask``):
    reduce over the kept cells, map from the zeroed patch scores, zeroed on the masked pixels."""
    import torch
    import torch.nn.functional as F

    if mask is not None:
        keep = torch.from_numpy(mask.keep(tuple(patch_scores.shape[1:])))
        scores = _reduce(patch_scores[:, keep], reduction)
        patch_scores = patch_scores * keep
    maps = F.interpolate(patch_scores[:, None], size=size, mode="bilinear", align_corners=False)
    if sigma > 0:
        maps = _gaussian_blur(maps, sigma)
    if mask is None:
        return _reduce(patch_scores, reduction), maps[:, 0]
    return scores, maps[:, 0] * torch.from_numpy(~mask.pixels)


def _gaussian_blur(maps, sigma: float):
    import torch
    import torch.nn.functional as F

    from ...scoring.postprocess import kernel_size

    size = kernel_size(sigma)
    x = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = (g / g.sum()).float()
    pad = size // 2
    maps = F.pad(maps, (pad, pad, pad, pad), mode="reflect")
    maps = F.conv2d(maps, g.view(1, 1, 1, -1))
    return F.conv2d(maps, g.view(1, 1, -1, 1))


def _top_fraction_mean(flat, fraction: float = 0.05):
    count = max(1, int(round(flat.shape[1] * fraction)))
    return flat.topk(count, dim=1).values.mean(dim=1)


TORCH_REDUCTIONS = {
    "max": lambda flat: flat.max(dim=1).values,
    "mean": lambda flat: flat.mean(dim=1),
    "top_fraction_mean": _top_fraction_mean,
}


def _reduce(patch_scores, reduction: dict[str, Any]):
    params = dict(reduction)
    return TORCH_REDUCTIONS[params.pop("name")](patch_scores.flatten(1), **params)


def _knn_head(artifact):
    import torch

    bank = torch.from_numpy(artifact.array("bank.npy").astype(np.float32))
    k = int(artifact.metadata.scoring.get("k", 1))

    def score(outputs):
        feats = outputs["features"]
        n, d, h, w = feats.shape
        queries = feats.permute(0, 2, 3, 1).reshape(-1, d)
        dist = torch.cdist(queries, bank)  # the usual torch implementation: float32, full (P,M) matrix
        return dist.topk(k, dim=1, largest=False).values.mean(dim=1).reshape(n, h, w)

    return score


def _mahalanobis_head(artifact):
    import torch

    mean = torch.from_numpy(artifact.array("mean.npy").astype(np.float64))
    factor = torch.from_numpy(artifact.array("factor.npy").astype(np.float64))
    precision = factor @ factor.transpose(1, 2)  # Σ⁻¹ per position

    def score(outputs):
        feats = outputs["features"]
        n, c, h, w = feats.shape
        delta = feats.double().reshape(n, c, h * w).permute(0, 2, 1) - mean  # (N,P,C)
        d2 = torch.einsum("npc,pcd,npd->np", delta, precision, delta)
        return d2.clamp_min(0).sqrt().float().reshape(n, h, w)

    return score


def _reconstruction_head(artifact):
    def score(outputs):
        error = outputs["error"]
        return error[:, 0] if error.ndim == 4 else error

    return score


class _EnsembleHead:
    """``scoring.kind = ensemble`` in torch: the members' torch heads and postprocessing, fused in float64
    by the rule of ``scoring.ensemble`` (mean of (x − loc) / scale over members, scores and maps)."""

    def __init__(self, artifact):
        from ...scoring.ensemble import MemberArtifact

        meta = artifact.metadata
        self.members = list(meta.scoring["members"])
        self.size = (meta.input.height, meta.input.width)
        self.heads = [TORCH_HEADS[m["scoring"]["kind"]](MemberArtifact.of(artifact, m)) for m in self.members]

    def __call__(self, outputs):
        return tuple(head({"features": outputs[m["output"]]}) for head, m in zip(self.heads, self.members))

    def postprocess(self, patch_scores, mask=None):
        scores, maps = 0.0, 0.0
        for p, m in zip(patch_scores, self.members):
            post, norm = m["postprocess"], m["norm"]
            s, mp = _postprocess(p, mask, self.size, float(post["blur_sigma"]), dict(post["reduction"]))
            scores = scores + (s.double() - norm["score"]["loc"]) / norm["score"]["scale"]
            maps = maps + (mp.double() - norm["map"]["loc"]) / norm["map"]["scale"]
        n = len(self.members)
        return (scores / n).float(), (maps / n).float()


TORCH_HEADS = {"knn": _knn_head, "mahalanobis": _mahalanobis_head, "reconstruction": _reconstruction_head,
               "ensemble": _EnsembleHead}

BACKEND = TorchReference
