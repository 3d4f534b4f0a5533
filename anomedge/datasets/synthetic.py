"""Synthetic defects with pixel masks on real textures, written in MVTec layout.

Textures: scikit-image's bundled ``brick``, ``grass``, ``gravel`` (512×512 gray photos shipped inside the
wheel; read from disk, never fetched) and ``elpv`` (the defect-free mono ELPV cells, needs ``elpv-dataset``).

Every image has a *slot* number, which is its file stem: ``train/good/000..``, then ``test/good/..``, then
``test/<defect>/..`` (defects cycle through ``DEFECTS``). The defect-free rendering of slot ``k`` is
``SyntheticTexture(texture, size, seed).clean(k)``: a random ``size``×``size`` crop of the texture (ELPV: one
cell per slot, resized), random flips, brightness gain in [0.95, 1.05]. A defective image is that clean
image with one defect drawn by OpenCV from its own random stream (``.defective(k, defect)``):

- ``scratch``: thin polyline, lighter or darker;
- ``spot``: filled ellipse, intensity shift with a blurred (soft) edge inside the ellipse;
- ``crack``: random-walk polyline of varying thickness, darker;
- ``missing_piece``: a polygon replaced by a flat fill or by a rotated other crop.

Solar-cell defects (in ``DRAWERS``, not in ``DEFECTS``, so the written data set is unchanged):

- ``dark_area``: an inactive region cut off by a crack: the crack polyline across the image and the
  region on one side of it darkened, the darkening fading in from the crack (soft edge);
- ``broken_finger``: 1–4 short interrupted segments along thin horizontal lines, darker.

``draw_defect(image, defect, rng)`` draws any of ``DRAWERS`` on a square uint8 image of any size
(gray or colour; colour gets the same shift in every channel) → (image, mask): what the synthetic
supervision detector trains on.

The mask (``ground_truth/<defect>/<stem>_mask.png``, 0/255 uint8) is exactly the drawn region: every mask
pixel differs from the clean image and every other pixel is identical to it (a pixel whose shift would
saturate is shifted the other way). Same arguments → same bytes; the folder is written once and reused.
"""

from __future__ import annotations

import importlib.util
import zlib
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from ..errors import InputError
from .cache import build_once, write_png
from .folder import load_mvtec
from .split import Split

SKIMAGE_TEXTURES = ("brick", "grass", "gravel")
DEFECTS = ("scratch", "spot", "crack", "missing_piece")


# ---- texture sources -------------------------------------------------------------------------------------

def _skimage_file(name: str) -> Path | None:
    spec = importlib.util.find_spec("skimage")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "data" / f"{name}.png"
    return path if path.is_file() else None


def _elpv_cells() -> list[Path]:
    from .elpv import elpv_root, read_labels

    return [p for p, prob, kind in read_labels(elpv_root()) if kind == "mono" and prob == 0]


def available_textures() -> tuple[str, ...]:
    """Textures that load with no network: the bundled scikit-image files present, and elpv if installed."""
    names = [n for n in SKIMAGE_TEXTURES if _skimage_file(n) is not None]
    return tuple(names + (["elpv"] if importlib.util.find_spec("elpv_dataset") is not None else []))


def _read_gray(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise InputError(f"{path}: cannot be read as an image; reinstall the package that ships it")
    return image


def _fit(image: np.ndarray, min_side: int) -> np.ndarray:
    """Resize so that the short side is ``min_side`` (INTER_AREA shrinking, INTER_CUBIC enlarging)."""
    h, w = image.shape
    scale = min_side / min(h, w)
    if scale == 1:
        return image
    shape = (max(min_side, int(round(w * scale))), max(min_side, int(round(h * scale))))
    return cv2.resize(image, shape, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)


class SyntheticTexture:
    """Renders slot ``k`` of the synthetic set: ``clean(k)`` (size, size) uint8, ``defective(k, defect)``
    → (image, mask bool). Deterministic in (texture, size, seed, k)."""

    def __init__(self, texture: str, size: int = 256, seed: int = 0):
        available = available_textures()
        if texture not in available:
            raise InputError(f"synthetic texture '{texture}': expected one of {', '.join(available) or '(none)'}"
                             " (elpv needs `pip install elpv-dataset`)")
        if not 32 <= int(size) <= 2048:
            raise InputError(f"synthetic: size {size}: expected 32..2048 pixels")
        self.texture, self.size, self.seed = texture, int(size), int(seed)
        if texture == "elpv":
            cells = _elpv_cells()
            self._cells = [cells[i] for i in np.random.default_rng([self.seed, 99]).permutation(len(cells))]
            self._image = None
        else:
            image = _read_gray(_skimage_file(texture))
            # crops need room to move: upscale when the short side is under 1.5 × size
            self._image = _fit(image, int(np.ceil(1.5 * self.size))) if min(image.shape) < 1.5 * self.size else image

    def _rng(self, slot: int, stream: int) -> np.random.Generator:
        # the texture name is part of the key so that each texture gets its own defect geometry
        return np.random.default_rng([self.seed, zlib.crc32(self.texture.encode()), int(slot), stream])

    def _crop(self, rng: np.random.Generator, slot: int) -> np.ndarray:
        if self._image is None:  # one ELPV cell per slot
            return _fit(_read_gray(self._cells[slot % len(self._cells)]), self.size)[: self.size, : self.size]
        h, w = self._image.shape
        y, x = rng.integers(0, h - self.size + 1), rng.integers(0, w - self.size + 1)
        return self._image[y: y + self.size, x: x + self.size]

    def clean(self, slot: int) -> np.ndarray:
        rng = self._rng(slot, 0)
        image = self._crop(rng, slot)
        if rng.integers(2):
            image = image[:, ::-1]
        if rng.integers(2):
            image = image[::-1, :]
        gain = rng.uniform(0.95, 1.05)
        return np.clip(np.rint(image.astype(np.float32) * gain), 0, 255).astype(np.uint8)

    def defective(self, slot: int, defect: str) -> tuple[np.ndarray, np.ndarray]:
        if defect not in DRAWERS:
            raise InputError(f"synthetic defect '{defect}': expected one of {', '.join(DRAWERS)}")
        clean = self.clean(slot)
        rng = self._rng(slot, 1)
        mask, delta = DRAWERS[defect](clean, rng, self)
        return _apply(clean, mask, delta), mask


# ---- defects: each returns (mask bool (H, W), signed delta (H, W) int/float, nonzero on the mask) --------

def _apply(clean: np.ndarray, mask: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """clean + delta on the mask, rounded, at least 1 grey level; a shift that would saturate goes the
    other way, so that every mask pixel changes and no other pixel does."""
    d = np.rint(np.asarray(delta, np.float32)[mask])
    d = np.where(d == 0, 1.0, d)
    v = clean[mask].astype(np.float32)
    new = np.clip(v + d, 0, 255)
    stuck = new == v
    new[stuck] = np.clip(v[stuck] - d[stuck], 0, 255)
    out = clean.copy()
    out[mask] = new.astype(np.uint8)
    return out


def _sign(rng: np.random.Generator) -> float:
    return 1.0 if rng.integers(2) else -1.0


def _point(rng: np.random.Generator, size: int, margin: float = 0.15) -> np.ndarray:
    return rng.uniform(margin * size, (1 - margin) * size, 2)


def _scratch(clean, rng, tex):
    s = tex.size
    start, angle = _point(rng, s), rng.uniform(0, np.pi)
    length = rng.uniform(0.25, 0.5) * s
    t = np.linspace(0, 1, int(rng.integers(3, 6)))
    direction, normal = np.array([np.cos(angle), np.sin(angle)]), np.array([-np.sin(angle), np.cos(angle)])
    pts = start + np.outer(t * length, direction) + np.outer(rng.normal(0, 0.02 * s, t.size), normal)
    mask = np.zeros((s, s), np.uint8)
    cv2.polylines(mask, [np.rint(pts).astype(np.int32)], False, 1, max(1, s // 128), cv2.LINE_8)
    return mask.astype(bool), np.full((s, s), _sign(rng) * rng.uniform(70, 120), np.float32)


def _spot(clean, rng, tex):
    s = tex.size
    center = _point(rng, s, 0.2)
    axes = rng.uniform(0.04, 0.12, 2) * s
    mask = np.zeros((s, s), np.uint8)
    cv2.ellipse(mask, (int(center[0]), int(center[1])), (max(2, int(axes[0])), max(2, int(axes[1]))),
                float(rng.uniform(0, 180)), 0, 360, 1, -1, cv2.LINE_8)
    soft = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), max(1.0, float(axes.min()) / 3))
    alpha = np.clip(soft / max(float(soft.max()), 1e-6), 0.3, 1.0)  # soft edge, kept inside the ellipse
    return mask.astype(bool), _sign(rng) * rng.uniform(50, 100) * alpha


def _crack(clean, rng, tex):
    s = tex.size
    point, angle = _point(rng, s), rng.uniform(0, 2 * np.pi)
    step = s / 30
    mask = np.zeros((s, s), np.uint8)
    for _ in range(int(rng.integers(10, 20))):
        angle += rng.normal(0, 0.5)
        nxt = np.clip(point + step * np.array([np.cos(angle), np.sin(angle)]), 0, s - 1)
        thickness = int(rng.integers(1, max(2, s // 64) + 1))
        cv2.line(mask, tuple(int(v) for v in np.rint(point)), tuple(int(v) for v in np.rint(nxt)), 1,
                 thickness, cv2.LINE_8)
        point = nxt
    return mask.astype(bool), np.full((s, s), -rng.uniform(80, 140), np.float32)


def _missing_piece(clean, rng, tex):
    s = tex.size
    center, radius = _point(rng, s, 0.2), rng.uniform(0.06, 0.15) * s
    n = int(rng.integers(5, 8))
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    pts = center + np.stack([np.cos(angles), np.sin(angles)], 1) * radius * rng.uniform(0.6, 1.0, (n, 1))
    mask = np.zeros((s, s), np.uint8)
    cv2.fillPoly(mask, [np.rint(pts).astype(np.int32)], 1, cv2.LINE_8)
    region = mask.astype(bool)
    if rng.integers(2):  # flat fill, at least 60 grey levels from the region's mean
        mean = float(clean[region].mean()) if region.any() else 128.0
        fill = mean + 60 + rng.uniform(0, 60) if mean < 128 else mean - 60 - rng.uniform(0, 60)
        patch = np.full((s, s), np.clip(fill, 0, 255), np.float32)
    else:  # another crop: the image rolled by a quarter-to-three-quarters turn and rotated 90°
        shift = tuple(int(v) for v in rng.integers(s // 4, 3 * s // 4 + 1, 2))
        patch = np.rot90(np.roll(clean, shift, (0, 1))).astype(np.float32)
    delta = np.rint(patch) - clean.astype(np.float32)
    delta[delta == 0] = 40.0  # a pixel the patch happens to leave unchanged is still drawn
    return region, delta


def _crack_across(rng, s: int, depth: float) -> np.ndarray:
    """(K,2) x,y points of a wavy crack from the left to the right border, at mean height ``depth``·s."""
    n = int(rng.integers(6, 12))
    x = np.linspace(0, s - 1, n)
    tilt = rng.uniform(-0.25, 0.25) * s
    y = depth * s + tilt * (x / max(s - 1, 1) - 0.5) + np.cumsum(rng.normal(0, 0.02 * s, n))
    return np.stack([x, np.clip(y, 1, s - 2)], 1)


def _orient(rng, *planes: np.ndarray) -> list[np.ndarray]:
    """The same random quarter turn and flip of every (s,s) plane (drawn once in a canonical pose)."""
    k, flip = int(rng.integers(4)), bool(rng.integers(2))
    out = [np.rot90(p, k) for p in planes]
    return [np.ascontiguousarray(p[:, ::-1] if flip else p) for p in out]


def _dark_area(clean, rng, tex):
    s = tex.size
    crack = _crack_across(rng, s, rng.uniform(0.15, 0.5))
    pts = np.rint(np.vstack([crack, [[s - 1, 0], [0, 0]]])).astype(np.int32)
    region = np.zeros((s, s), np.uint8)
    cv2.fillPoly(region, [pts], 1, cv2.LINE_8)
    line = np.zeros((s, s), np.uint8)
    cv2.polylines(line, [np.rint(crack).astype(np.int32)], False, 1, max(1, s // 128), cv2.LINE_8)
    # soft edge: the darkening grows from 30 % at the crack to full over ~6 % of the side
    inside = cv2.distanceTransform(region, cv2.DIST_L2, 3)
    alpha = np.clip(inside / max(1.0, 0.06 * s), 0.3, 1.0)
    delta = -rng.uniform(50, 130) * alpha
    delta[line.astype(bool)] = -rng.uniform(80, 140)
    mask, delta = _orient(rng, (region | line).astype(bool), delta.astype(np.float32))
    return mask, delta


def _broken_finger(clean, rng, tex):
    s = tex.size
    mask = np.zeros((s, s), np.uint8)
    row = rng.uniform(0.1, 0.9) * s
    for _ in range(int(rng.integers(1, 5))):  # neighbouring fingers break together: rows a few px apart
        x0 = rng.uniform(0.05, 0.8) * s
        length = rng.uniform(0.05, 0.2) * s
        y = int(np.clip(np.rint(row), 0, s - 1))
        # a broken finger leaves a thin dark band (the unpowered stretch) of 1 px to ~4 % of the side
        thickness = int(rng.integers(1, max(2, s // 25) + 1))
        cv2.line(mask, (int(x0), y), (int(min(s - 1, x0 + length)), y), 1, thickness, cv2.LINE_8)
        row += rng.uniform(0.03, 0.08) * s * _sign(rng)
    if rng.integers(4) == 0:  # a quarter of the cells are mounted the other way round
        mask = np.ascontiguousarray(np.rot90(mask))
    return mask.astype(bool), np.full((s, s), -rng.uniform(40, 100), np.float32)


DrawFn = Callable[[np.ndarray, np.random.Generator, SyntheticTexture], tuple[np.ndarray, np.ndarray]]
DRAWERS: dict[str, DrawFn] = {
    "scratch": _scratch, "spot": _spot, "crack": _crack, "missing_piece": _missing_piece,
    "dark_area": _dark_area, "broken_finger": _broken_finger}
SOLAR_DEFECTS = ("dark_area", "broken_finger")


class _Side:
    """What a drawer reads from its texture: the side length."""

    def __init__(self, size: int):
        self.size = size


def draw_defect(image: np.ndarray, defect: str, rng: np.random.Generator,
                strength: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Square uint8 image (S,S) or (S,S,C), S ≥ 32 → (image with ``defect`` drawn, mask (S,S) bool).
    ``strength`` in (0, 1] scales the drawn intensity shift (real defects are often faint); at least one
    grey level remains. Gray: every mask pixel changes and no other does. Colour: the gray drawing's
    shift in every channel."""
    if not 0 < strength <= 1:
        raise InputError(f"draw_defect: strength {strength!r}: expected a value in (0, 1]")
    if defect not in DRAWERS:
        raise InputError(f"synthetic defect '{defect}': expected one of {', '.join(DRAWERS)}")
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or image.shape[0] != image.shape[1] or image.shape[0] < 32:
        raise InputError(f"draw_defect: image {image.dtype} {image.shape}: expected a square uint8 (S,S[,C]), S >= 32")
    gray = image if image.ndim == 2 else np.rint(image.mean(axis=2)).astype(np.uint8)
    mask, delta = DRAWERS[defect](gray, rng, _Side(image.shape[0]))
    delta = np.asarray(delta, np.float32) * np.float32(strength)
    if image.ndim == 2:
        return _apply(gray, mask, delta), mask
    planes = [_apply(np.ascontiguousarray(image[:, :, c]), mask, delta) for c in range(image.shape[2])]
    return np.stack(planes, axis=2), mask


# ---- the data set ----------------------------------------------------------------------------------------

def layout(n_train: int, n_test_good: int, n_test_defect: int) -> list[tuple[str, int, str | None]]:
    """(relative image path, slot, defect or None) of every image, in slot order."""
    total = n_train + n_test_good + n_test_defect
    width = max(3, len(str(total - 1)))
    folders = ["train/good"] * n_train + ["test/good"] * n_test_good
    defects: list[str | None] = [None] * (n_train + n_test_good)
    folders += [f"test/{DEFECTS[i % len(DEFECTS)]}" for i in range(n_test_defect)]
    defects += [DEFECTS[i % len(DEFECTS)] for i in range(n_test_defect)]
    rows = [(f"{folder}/{slot:0{width}d}.png", slot, defect)
            for slot, (folder, defect) in enumerate(zip(folders, defects))]
    return rows


def make_synthetic(out_dir: str | Path, texture: str = "brick", n_train: int = 40, n_test_good: int = 20,
                   n_test_defect: int = 40, size: int = 256, seed: int = 0) -> Split:
    counts = {"n_train": n_train, "n_test_good": n_test_good, "n_test_defect": n_test_defect}
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise InputError(f"synthetic: {name}={value!r}: expected an integer ≥ 0")
    if n_train < 1:
        raise InputError("synthetic: n_train=0: expected at least one training image")
    tex = SyntheticTexture(texture, size, seed)  # validates texture and size before anything is written
    params = {"kind": "synthetic", "version": 1, "texture": texture, "size": int(size), "seed": int(seed),
              **{k: int(v) for k, v in counts.items()}}

    def write(folder: Path) -> None:
        for rel, slot, defect in layout(n_train, n_test_good, n_test_defect):
            if defect is None:
                write_png(folder / rel, tex.clean(slot))
                continue
            image, mask = tex.defective(slot, defect)
            write_png(folder / rel, image)
            write_png(folder / "ground_truth" / defect / f"{Path(rel).stem}_mask.png", mask.astype(np.uint8) * 255)

    root = build_once(out_dir, params, write)
    split = load_mvtec(root)
    return Split(f"synthetic:{texture}", split.train, split.test, split.test_labels, split.test_masks,
                 split.defect_types)
