"""A procedural product with distinct components and planted defects, for tests and demos.

Each image shows a plate (body) on a background, with a ring, a chip and a row of pins. The
component map labels them, so segment-wise features have something real to pool over. Defects:
scratch, contamination, missing part, shifted part, texture change; each comes with its pixel mask.
Everything is a pure function of the spec's seed and the image index.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from detectors.errors import InputError
from segad.data.mvtec import generated_set, load_mvtec, spec_key, write_samples
from segad.data.samples import GOOD, Dataset, Split

DEFECT_TYPES = ("scratch", "contamination", "missing", "shifted", "texture")
COMPONENTS = ("background", "body", "ring", "chip", "pins")
SYNTHETIC_CATEGORY = "widget"


@dataclass(frozen=True)
class SyntheticSpec:
    image_size: int = 128
    n_train: int = 60
    n_test_good: int = 20
    n_defects_per_type: int = 6
    seed: int = 0

    def key(self) -> str:
        return spec_key(self)


@dataclass(frozen=True)
class SyntheticImage:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    mask: np.ndarray  # (H, W) bool, all False for good images
    components: np.ndarray  # (H, W) uint8 component labels of the nominal product
    defect_type: str
    split: Split


@dataclass(frozen=True)
class _Layout:
    body: tuple[int, int, int, int]  # x0, y0, x1, y1
    ring: tuple[int, int, int, int]  # cx, cy, r_out, r_in
    chip: tuple[int, int, int, int]
    pins: tuple[tuple[int, int, int, int], ...]
    stripe_phase: float
    gain: float


def _layout(rng: np.random.Generator, s: int) -> _Layout:
    jx, jy = (int(v) for v in rng.integers(-s // 40, s // 40 + 1, size=2))
    body = (s // 8 + jx, s // 6 + jy, 7 * s // 8 + jx, 5 * s // 6 + jy)
    ring = (int(0.33 * s) + jx, int(0.45 * s) + jy, int(0.13 * s), int(0.07 * s))
    chip = (int(0.55 * s) + jx, int(0.30 * s) + jy, int(0.78 * s) + jx, int(0.56 * s) + jy)
    n_pins, y0, y1 = 5, int(0.66 * s) + jy, int(0.78 * s) + jy
    x_start, pitch, width = int(0.22 * s) + jx, int(0.12 * s), max(2, int(0.05 * s))
    pins = tuple((x_start + i * pitch, y0, x_start + i * pitch + width, y1) for i in range(n_pins))
    return _Layout(body, ring, chip, pins, float(rng.uniform(0, 2 * np.pi)), float(rng.uniform(0.95, 1.05)))


def _components(lay: _Layout, s: int, draw_chip: bool = True, chip_shift: tuple[int, int] = (0, 0)) -> np.ndarray:
    comp = np.zeros((s, s), np.uint8)
    x0, y0, x1, y1 = lay.body
    cv2.rectangle(comp, (x0, y0), (x1, y1), 1, -1)
    cx, cy, ro, ri = lay.ring
    cv2.circle(comp, (cx, cy), ro, 2, -1)
    cv2.circle(comp, (cx, cy), ri, 1, -1)
    if draw_chip:
        x0, y0, x1, y1 = lay.chip
        dx, dy = chip_shift
        cv2.rectangle(comp, (x0 + dx, y0 + dy), (x1 + dx, y1 + dy), 3, -1)
    for x0, y0, x1, y1 in lay.pins:
        cv2.rectangle(comp, (x0, y0), (x1, y1), 4, -1)
    return comp


_COLOURS = np.array([[40, 45, 50], [150, 155, 140], [200, 170, 90], [35, 35, 45], [210, 210, 215]], np.float32)


def _paint(comp: np.ndarray, lay: _Layout, rng: np.random.Generator) -> np.ndarray:
    s = comp.shape[0]
    img = _COLOURS[comp].copy()
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    stripes = 6.0 * np.sin(2 * np.pi * (xx + yy) / max(4.0, s / 16) + lay.stripe_phase)
    img[comp == 1] += stripes[comp == 1, None]
    img *= lay.gain
    img += rng.normal(0.0, 3.0, size=img.shape).astype(np.float32)
    return img


def _finish(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _random_point_in(region: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
    ys, xs = np.nonzero(region)
    i = int(rng.integers(len(ys)))
    return int(xs[i]), int(ys[i])


def _defect(kind: str, lay: _Layout, s: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render a defective product; returns (float image, mask, nominal component map)."""
    nominal = _components(lay, s)
    mask = np.zeros((s, s), np.uint8)
    if kind in ("missing", "shifted"):
        if kind == "missing":
            comp = _components(lay, s, draw_chip=False)
        else:
            shift = tuple(int(v) * int(rng.choice([-1, 1])) for v in rng.integers(s // 25 + 2, s // 12 + 3, size=2))
            comp = _components(lay, s, chip_shift=shift)  # type: ignore[arg-type]
        img = _paint(comp, lay, rng)
        mask = ((comp == 3) != (nominal == 3)).astype(np.uint8)
        return img, mask.astype(bool), nominal
    img = _paint(nominal, lay, rng)
    cx, cy = _random_point_in(nominal == 1, rng)
    if kind == "scratch":
        angle = rng.uniform(0, np.pi)
        half = rng.uniform(0.12, 0.25) * s
        p0 = (int(cx - half * np.cos(angle)), int(cy - half * np.sin(angle)))
        p1 = (int(cx + half * np.cos(angle)), int(cy + half * np.sin(angle)))
        thickness = max(1, s // 80)
        cv2.line(mask, p0, p1, 1, thickness)
        img[mask.astype(bool)] = rng.uniform(225, 250)
    elif kind == "contamination":
        axes = tuple(int(v) for v in rng.integers(s // 30 + 2, s // 12 + 3, size=2))
        cv2.ellipse(mask, (cx, cy), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        colour = np.array([110, 70, 30], np.float32) * rng.uniform(0.8, 1.2)
        img[mask.astype(bool)] = colour + rng.normal(0, 6, size=(int(mask.sum()), 3))
    elif kind == "texture":
        half = int(rng.integers(s // 14 + 2, s // 8 + 3))
        cv2.rectangle(mask, (cx - half, cy - half), (cx + half, cy + half), 1, -1)
        mask &= (nominal == 1).astype(np.uint8)
        yy, xx = np.mgrid[0:s, 0:s]
        checker = ((xx // 3 + yy // 3) % 2) * 40.0 - 20.0
        m = mask.astype(bool)
        img[m] = _COLOURS[1] * lay.gain + checker[m, None] + rng.normal(0, 3, size=(int(m.sum()), 3))
    else:
        raise InputError(f"unknown synthetic defect type {kind!r}; choose from {DEFECT_TYPES}")
    return img, mask.astype(bool), nominal


def render(spec: SyntheticSpec, index: int, defect_type: str = GOOD, split: Split = Split.TEST) -> SyntheticImage:
    """Image number ``index`` of the spec; the same arguments always give the same pixels."""
    type_id = 0 if defect_type == GOOD else 1 + DEFECT_TYPES.index(defect_type)
    rng = np.random.default_rng([spec.seed, index, type_id, 0 if split == Split.TRAIN else 1])
    s = spec.image_size
    lay = _layout(rng, s)
    if defect_type == GOOD:
        comp = _components(lay, s)
        img, mask = _paint(comp, lay, rng), np.zeros((s, s), bool)
    else:
        img, mask, comp = _defect(defect_type, lay, s, rng)
    return SyntheticImage(_finish(img), mask, comp, defect_type, split)


def generate(spec: SyntheticSpec) -> list[SyntheticImage]:
    out = [render(spec, i, GOOD, Split.TRAIN) for i in range(spec.n_train)]
    out += [render(spec, i, GOOD, Split.TEST) for i in range(spec.n_test_good)]
    out += [render(spec, i, t) for t in DEFECT_TYPES for i in range(spec.n_defects_per_type)]
    return out


def write_mvtec(spec: SyntheticSpec, root: str | Path, category: str = SYNTHETIC_CATEGORY) -> Path:
    """Write the set in the MVTec layout (plus ``segments/``) under ``root/category``."""
    return write_samples(Path(root) / category, generate(spec))


def load_synthetic(spec: SyntheticSpec | None = None, cache_dir: str | Path | None = None) -> Dataset:
    """The built-in ``synthetic`` dataset: written once per spec into the cache, then read from disk."""
    spec = spec or SyntheticSpec()
    root = generated_set(f"synthetic-{spec.key()}", cache_dir, lambda tmp: write_mvtec(spec, tmp))
    return load_mvtec(root, SYNTHETIC_CATEGORY, name="synthetic")
