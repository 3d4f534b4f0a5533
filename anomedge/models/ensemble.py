"""One-pass ensemble: several detectors' heads over ONE backbone pass, each normalised, then fused.

Graph: image (N,3,H,W) → one backbone pass over the union of the members' stages → per member i its
own feature module (``PadimFeatures.combine`` / ``PatchFeatures.combine`` on its stages of that
pass) → outputs ``m{i}_features``. ONE ``model.onnx``; the members' fitted arrays are prefixed
(``m0_mean.npy``, ``m1_bank.npy``, ``m1_knn.onnx``) and hashed like any other file.
Fit: one pass over the good images; a seeded ``norm_fraction`` (default 20 %) of them is held out;
each member fits on the rest (``fit_features``) and is then scored on the held-out images with the
host heads (numpy, as the runtime) → per member the normalisation constants of its image score and
of its anomaly map (all pixels), by ``normalisation`` (``zscore``: mean / std; ``robust``: median /
1.4826·MAD). With ``refit`` each member is then fitted again on all the good images (the constants stay
those measured out of sample). The fusion rule is ``scoring.ensemble.fuse``: mean over members of the normalised
image scores, and of the normalised maps at the input resolution.
Metadata: ``scoring = {"kind": "ensemble", "rule": "mean", "normalisation", "members": [...]}``
(see ``scoring.ensemble``); ``model.members`` holds each member's model block (its stages, channel
subset, grid …) so that the PyTorch reference rebuilds the graph from metadata alone.
Default members: PaDiM on stages 2+3+4 at 14×14 with the top-2 % mean, and PatchCore (stages 2+4,
1 % coreset, top-5 % mean), both on one EfficientNet-Lite0 pass.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..artifact import InputSpec
from ..errors import InputError
from ..scoring.ensemble import NORMALISATIONS, MemberArtifact, member_postprocess, norm_constants
from .backbones import BackboneSpec, build_backbone
from .detector import Detector, get_detector
from .padim import PadimFeatures
from .patchcore import PatchFeatures

TOP2 = {"name": "top_fraction_mean", "fraction": 0.02}
DEFAULT_MEMBERS = [
    {"detector": "padim", "params": {"backbone": {"stages": [2, 3, 4]}, "grid_pool": 2, "reduction": TOP2}},
    {"detector": "patchcore", "params": {}},
]

# member detector → (its feature module from its model block, without an extractor)
MEMBER_GRAPHS: dict[str, Callable[[dict[str, Any]], torch.nn.Module]] = {
    "padim": lambda block: PadimFeatures(None, block["channel_index"], block["grid_pool"]),
    "patchcore": lambda block: PatchFeatures(None, block["aggregation"]),
}
SHARED = ("image_size", "batch_size")  # set by the ensemble for every member
# member detector → parameters it gets unless the member sets them: ad-update does not apply to an
# ensemble, so PaDiM's float64 update statistics (8 MB at 14×14) are not shipped
MEMBER_DEFAULTS: dict[str, dict[str, Any]] = {"padim": {"update_stats": False}}


class EnsembleGraph(torch.nn.Module):
    """(N,3,H,W) → tuple of member features, from ONE pass of ``extractor`` (the union of the stages).
    ``picks[i]``: the indices into the extractor's maps that member i reads (finest first)."""

    def __init__(self, extractor: torch.nn.Module, members: Sequence[torch.nn.Module], picks: Sequence[Sequence[int]]):
        super().__init__()
        self.extractor = extractor
        self.members = torch.nn.ModuleList(members)
        self.picks = [list(p) for p in picks]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        maps = self.extractor(x)
        return tuple(m.combine([maps[j] for j in pick]) for m, pick in zip(self.members, self.picks))


def _build(model_block: dict[str, Any]) -> EnsembleGraph:
    spec = BackboneSpec.from_dict(model_block["backbone"])
    extractor = build_backbone(spec)
    members, picks = [], []
    for m in model_block["members"]:
        members.append(MEMBER_GRAPHS[m["detector"]](m["model"]))
        picks.append([spec.stages.index(s) for s in m["model"]["backbone"]["stages"]])
    return EnsembleGraph(extractor, members, picks).eval()


@dataclass
class EnsembleConfig:
    # the shared backbone (model, weights); its stages are the union of the members' stages
    backbone: dict[str, Any] = field(default_factory=lambda: BackboneSpec().to_dict())
    image_size: int = 224
    # [{"detector": "padim" | "patchcore", "params": {that detector's parameters}}]; a member's
    # backbone may only set "stages"; image_size / batch_size are the ensemble's.
    members: list = field(default_factory=lambda: copy.deepcopy(DEFAULT_MEMBERS))
    normalisation: str = "zscore"  # or "robust" (median / 1.4826·MAD)
    norm_fraction: float = 0.2  # of the good images given to fit, held out for the normalisation constants
    # after the constants are measured, refit every member on ALL the good images (fit + held out), so the
    # members see as many images as a single detector does; the constants stay the held-out ones
    # (ELPV, 5 splits: mono +0.0041, poly +0.0024 AUROC over refit=False; docs/ensemble.md)
    refit: bool = True
    batch_size: int = 16
    seed: int = 0


def _member_specs(cfg: EnsembleConfig) -> list[tuple[str, dict[str, Any]]]:
    """Validate ``cfg.members`` → [(detector, params)]; every fault is a one-line InputError."""
    hint = 'expected a list of {"detector": "padim"|"patchcore", "params": {...}}'
    if not isinstance(cfg.members, (list, tuple)) or not 1 <= len(cfg.members) <= 8:
        raise InputError(f"ensemble members {cfg.members!r}: {hint}, 1 to 8 members")
    out = []
    for i, m in enumerate(cfg.members):
        if not isinstance(m, dict) or set(m) - {"detector", "params"} or "detector" not in m:
            raise InputError(f"ensemble members[{i}] {m!r}: {hint}")
        name, params = m["detector"], m.get("params", {})
        if name not in MEMBER_GRAPHS:
            raise InputError(f"ensemble members[{i}]: detector {name!r} cannot be a member; choose one of "
                             f"{', '.join(MEMBER_GRAPHS)}")
        if not isinstance(params, dict):
            raise InputError(f"ensemble members[{i}].params {params!r}: expected a JSON object")
        shared = sorted(set(params) & set(SHARED))
        if shared:
            raise InputError(f"ensemble members[{i}].params: {', '.join(shared)} is set for the whole ensemble; "
                             "remove it from the member")
        bb = params.get("backbone", {})
        if not isinstance(bb, dict) or set(bb) - {"stages"}:
            raise InputError(f"ensemble members[{i}].params.backbone {bb!r}: a member may only choose its "
                             '"stages"; the backbone model and weights are the ensemble\'s')
        out.append((name, params))
    return out


class Ensemble(Detector):
    name = "ensemble"
    output_names: tuple[str, ...] = ()
    config_class = EnsembleConfig

    def __init__(self, config: EnsembleConfig | None = None, progress: bool | None = None):
        self.config = cfg = config or EnsembleConfig()
        if cfg.normalisation not in NORMALISATIONS:
            raise InputError(f"normalisation '{cfg.normalisation}': expected one of {', '.join(NORMALISATIONS)}")
        if not isinstance(cfg.norm_fraction, (int, float)) or not 0 < cfg.norm_fraction < 1:
            raise InputError(f"norm_fraction {cfg.norm_fraction!r}: expected a value in (0, 1), e.g. 0.2")
        if not isinstance(cfg.refit, bool):
            raise InputError(f"refit {cfg.refit!r}: expected true or false")
        self.progress = progress
        specs = _member_specs(cfg)
        base = BackboneSpec.from_dict(cfg.backbone)
        self.members: list[Detector] = []
        for i, (name, params) in enumerate(specs):
            stages = params.get("backbone", {}).get("stages", list(base.stages))
            member_bb = {**base.to_dict(), "stages": list(stages)}
            full = {**MEMBER_DEFAULTS.get(name, {}), **params, "backbone": member_bb, "image_size": cfg.image_size,
                    "batch_size": cfg.batch_size}
            try:
                self.members.append(get_detector(name).from_params(full, progress=progress))
            except InputError as exc:
                raise InputError(f"ensemble members[{i}] ({name}): {exc}") from None
        union = sorted({s for m in self.members for s in m.spec.stages})
        self.spec = BackboneSpec.from_dict({**base.to_dict(), "stages": union}).with_weights_hash()
        self.output_names = tuple(f"m{i}_features" for i in range(len(self.members)))
        self._graph = _build(self.model_block())
        self.norms: list[dict[str, Any]] | None = None

    def model_block(self) -> dict[str, Any]:
        return {"backbone": self.spec.to_dict(),
                "members": [{"detector": m.name, "model": m.model_block()} for m in self.members]}

    @classmethod
    def build_graph(cls, model_block: dict[str, Any], artifact=None) -> EnsembleGraph:
        return _build(model_block)

    def graph(self) -> EnsembleGraph:
        return self._graph

    def input_spec(self) -> InputSpec:
        size = self.config.image_size
        return InputSpec(name="image", height=size, width=size, mean=tuple(self.spec.mean), std=tuple(self.spec.std))

    @torch.inference_mode()
    def features(self, paths: Sequence[Path]) -> list[np.ndarray]:
        """The graph over ``paths`` → per member (N,Cᵢ,hᵢ,wᵢ) float32 (one backbone pass per batch)."""
        from ..progress import steps
        from .features import batches

        bs = self.config.batch_size
        total = (len(paths) + bs - 1) // bs
        outs: list[list[np.ndarray]] = [[] for _ in self.members]
        for b in steps(batches(paths, self.input_spec(), bs), total, "features", self.progress):
            for acc, value in zip(outs, self._graph(b)):
                acc.append(value.float().numpy())
        return [np.concatenate(acc) for acc in outs]

    def split(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Seeded (fit, norm) indices of ``n`` good images; norm = round(norm_fraction · n), ≥ 2."""
        n_norm = int(round(n * self.config.norm_fraction))
        if n_norm < 2 or n - n_norm < 1:
            raise InputError(f"{n} good images: the ensemble holds {self.config.norm_fraction:.0%} out for its "
                             "normalisation and needs at least 2 held out and 1 to fit; use more good images")
        order = np.random.default_rng(self.config.seed).permutation(n)
        return np.sort(order[n_norm:]), np.sort(order[:n_norm])

    def fit(self, train: Sequence[Path]) -> "Ensemble":
        if len(train) == 0:
            raise InputError("no training images: the ensemble needs good images")
        return self.fit_features(self.features(list(train)))

    def fit_features(self, feats: Sequence[np.ndarray]) -> "Ensemble":
        """Fit on the graph's outputs for the good images (one array per member)."""
        fit_idx, norm_idx = self.split(len(feats[0]))
        # the members' final fit: on all the good images with refit, else on the fit part
        self.n_fit, self.n_norm = len(feats[0]) if self.config.refit else len(fit_idx), len(norm_idx)
        self.norms = []
        for i, (member, f) in enumerate(zip(self.members, feats)):
            member.fit_features(np.ascontiguousarray(f[fit_idx]))
            scores, maps = self.member_outputs(i, f[norm_idx])
            what = f"ensemble member {i} ({member.name})"
            self.norms.append({"score": norm_constants(scores, self.config.normalisation, f"{what} image scores"),
                               "map": norm_constants(maps, self.config.normalisation, f"{what} maps")})
            if self.config.refit:
                member.fit_features(np.ascontiguousarray(f))
        return self

    def member_block(self, i: int) -> dict[str, Any]:
        """Member i's entry of ``scoring.members`` (without ``norm`` before the fit has set it)."""
        member = self.members[i]
        blocks = member.metadata_blocks()
        out = {"name": f"{member.name}{i}", "detector": member.name, "output": self.output_names[i], "prefix": f"m{i}_",
               "scoring": blocks["scoring"], "postprocess": blocks["postprocess"]}
        if self.norms is not None and i < len(self.norms):
            out["norm"] = self.norms[i]
        return out

    def member_outputs(self, i: int, feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Member i alone on its features (N,C,h,w), with the runtime's numpy host head → raw image
        scores (N,) and maps (N,H,W)."""
        from ..scoring.heads import HEADS

        arrays = self.members[i].arrays()
        block = self.member_block(i)
        head = HEADS[block["scoring"]["kind"]](MemberArtifact(block, arrays.__getitem__), "numpy")
        size = (self.config.image_size, self.config.image_size)
        scores, maps = [], []
        for start in range(0, len(feats), 16):
            s, mp = member_postprocess(head({"features": feats[start:start + 16]}), block, size)
            scores.append(s)
            maps.append(mp)
        return np.concatenate(scores), np.concatenate(maps)

    def _fitted(self) -> None:
        if self.norms is None:
            raise InputError("the ensemble is not fitted: call fit() first")

    def arrays(self) -> dict[str, np.ndarray]:
        self._fitted()
        return {f"m{i}_{name}": a for i, m in enumerate(self.members) for name, a in m.arrays().items()}

    def write_files(self, out: Path) -> list[str]:
        """Each kNN member's ``knn.onnx`` (the onnxruntime kNN kernel's search graph), prefixed."""
        from ..export.writer import _save_knn_graph
        from ..scoring.heads import KNN_GRAPH

        names = []
        for i, m in enumerate(self.members):
            scoring = m.metadata_blocks()["scoring"]
            if scoring["kind"] == "knn":
                name = f"m{i}_{KNN_GRAPH}"
                _save_knn_graph(m.arrays()["bank.npy"], int(scoring.get("k", 1)), Path(out) / name)
                names.append(name)
        return names

    def metadata_blocks(self) -> dict[str, Any]:
        self._fitted()
        cfg = self.config
        members = [self.member_block(i) for i in range(len(self.members))]
        model = self.model_block()
        for entry, m in zip(model["members"], self.members):
            entry["fit"] = m.metadata_blocks()["model"]["fit"]
        model["fit"] = {**asdict(cfg), "n_fit": self.n_fit, "n_norm": self.n_norm}
        outputs: dict[str, Any] = {"names": list(self.output_names)}
        for name, m in zip(self.output_names, self.members):
            outputs[name] = m.metadata_blocks()["outputs"]["features"]
        return {
            "input": self.input_spec(),
            "model": model,
            "outputs": outputs,
            "scoring": {"kind": "ensemble", "placement": "host", "rule": "mean", "normalisation": cfg.normalisation,
                        "members": members},
            # the fusion reduces and maps per member (scoring.members[i].postprocess); this block is unused
            "postprocess": {"blur_sigma": 0.0, "reduction": {"name": "max"}},
        }
