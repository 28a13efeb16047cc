"""Generated defects: good images made defective, each with its mask, for training the classifier.

SegAD's three (part of a segment blurred, a small rectangle, a thin rectangle) plus the stronger
generators of the literature: DRAEM's Perlin-noise masks with a texture from another image, and
CutPaste with its scar variant. Images are RGB floats in [0, 1]; every draw comes from the
generator it is given, so a seed reproduces the set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from detectors.errors import InputError
from detectors.synthesis import draem_blend, draw_beta, perlin_mask
from detectors.synthesis import perlin_noise as perlin_noise  # re-exported: segad.defects.perlin_noise stays public

DEFECT_KINDS = ("blur", "rectangle", "thin_rectangle", "draem", "cutpaste", "scar")


@dataclass(frozen=True)
class GeneratedDefect:
    image: np.ndarray  # (H, W, 3) float32 in [0, 1]
    mask: np.ndarray  # (H, W) bool
    kind: str
    source: int = -1  # index of the good image it was made from


def _rect_mask(shape: tuple[int, int], h: int, w: int, rng: np.random.Generator, within: np.ndarray | None = None):
    H, W = shape
    h, w = max(1, min(h, H)), max(1, min(w, W))
    if within is not None and within.any():
        ys, xs = np.nonzero(within)
        k = int(rng.integers(len(ys)))
        y0 = int(np.clip(ys[k] - h // 2, 0, H - h))
        x0 = int(np.clip(xs[k] - w // 2, 0, W - w))
    else:
        y0, x0 = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
    mask = np.zeros(shape, bool)
    mask[y0 : y0 + h, x0 : x0 + w] = True
    return mask


def blur(image: np.ndarray, segments: np.ndarray, rng: np.random.Generator, **_) -> GeneratedDefect:
    """Part of one segment blurred: a component that lost its sharp detail."""
    H, W = segments.shape
    labels = np.unique(segments)
    seg = segments == rng.choice(labels)
    size = int(rng.uniform(0.15, 0.4) * min(H, W))
    mask = _rect_mask((H, W), size, size, rng, within=seg) & seg
    if not mask.any():
        mask = _rect_mask((H, W), size, size, rng)
    sigma = rng.uniform(0.02, 0.05) * min(H, W)
    blurred = cv2.GaussianBlur(image, (0, 0), sigma)
    out = np.where(mask[..., None], blurred, image)
    return GeneratedDefect(out.astype(np.float32), mask, "blur")


def _shade(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Darken or brighten the pixels under the mask, keeping their texture and (for grey images) no colour.

    Real defects mostly change intensity (stains, cracks, dead cell areas) rather than paint a random
    colour, and a colour that grey images never show would teach the classifier a shortcut.
    """
    factor = rng.uniform(0.2, 0.7) if rng.random() < 0.6 else rng.uniform(1.4, 2.2)
    out = image.copy()
    out[mask] = np.clip(image[mask] * factor + (0.0 if factor < 1 else 0.05), 0.0, 1.0)
    return out


def rectangle(image: np.ndarray, segments: np.ndarray, rng: np.random.Generator, **_) -> GeneratedDefect:
    """A small darker or brighter rectangle (a stain, a dead area, a foreign part)."""
    H, W = image.shape[:2]
    h, w = (int(rng.uniform(0.03, 0.1) * s) + 2 for s in (H, W))
    mask = _rect_mask((H, W), h, w, rng, within=segments > 0 if (segments > 0).any() else None)
    return GeneratedDefect(_shade(image, mask, rng).astype(np.float32), mask, "rectangle")


def thin_rectangle(image: np.ndarray, segments: np.ndarray, rng: np.random.Generator, **_) -> GeneratedDefect:
    """A thin darker or brighter rectangle (a scratch or a crack), horizontal or vertical."""
    H, W = image.shape[:2]
    long_side = int(rng.uniform(0.1, 0.3) * min(H, W)) + 2
    thin = int(rng.integers(1, max(2, min(H, W) // 64) + 1))
    h, w = (thin, long_side) if rng.random() < 0.5 else (long_side, thin)
    mask = _rect_mask((H, W), h, w, rng, within=segments > 0 if (segments > 0).any() else None)
    return GeneratedDefect(_shade(image, mask, rng).astype(np.float32), mask, "thin_rectangle")


def draem(
    image: np.ndarray, segments: np.ndarray, rng: np.random.Generator, texture: np.ndarray | None = None, **_
) -> GeneratedDefect:
    """DRAEM: I*(1-M) + (1-beta)*A*M + beta*I*M, A a texture (another image), beta = U(0,1)*0.8.

    Mask, opacity and blend come from ``detectors.synthesis``, so the DRAEM detector trains on the
    same anomalies the classifier is shown.
    """
    H, W = image.shape[:2]
    mask = perlin_mask((H, W), rng)
    if texture is None:
        texture = np.ascontiguousarray(image[::-1, ::-1])
    texture = cv2.resize(np.ascontiguousarray(np.rot90(texture, int(rng.integers(1, 4)))), (W, H))  # no DTD here
    out = draem_blend(image, texture, mask, draw_beta(rng))
    return GeneratedDefect(out.astype(np.float32), mask, "draem")


def cutpaste(image: np.ndarray, segments: np.ndarray, rng: np.random.Generator, **_) -> GeneratedDefect:
    """CutPaste: a patch of 2-15% of the area, aspect log-uniform in [0.3, 3.3], pasted elsewhere."""
    H, W = image.shape[:2]
    area = rng.uniform(0.02, 0.15) * H * W
    aspect = np.exp(rng.uniform(np.log(0.3), np.log(1 / 0.3)))
    h = int(np.clip(np.sqrt(area * aspect), 1, H - 1))
    w = int(np.clip(np.sqrt(area / aspect), 1, W - 1))
    sy, sx = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
    dy, dx = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
    out = image.copy()
    out[dy : dy + h, dx : dx + w] = image[sy : sy + h, sx : sx + w]
    mask = np.zeros((H, W), bool)
    mask[dy : dy + h, dx : dx + w] = True
    return GeneratedDefect(out.astype(np.float32), mask, "cutpaste")


def scar(image: np.ndarray, segments: np.ndarray, rng: np.random.Generator, **_) -> GeneratedDefect:
    """CutPaste-scar: a thin 2-16 x 10-25 px patch (at 256 px), rotated, pasted elsewhere."""
    H, W = image.shape[:2]
    scale = min(H, W) / 256
    w = max(1, int(rng.integers(2, 17) * scale))
    h = max(2, int(rng.integers(10, 26) * scale))
    sy, sx = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
    patch = image[sy : sy + h, sx : sx + w]
    side = int(np.ceil(np.hypot(h, w))) + 2
    canvas = np.zeros((side, side, 3), np.float32)
    pmask = np.zeros((side, side), np.float32)
    oy, ox = (side - h) // 2, (side - w) // 2
    canvas[oy : oy + h, ox : ox + w] = patch
    pmask[oy : oy + h, ox : ox + w] = 1
    rot = cv2.getRotationMatrix2D((side / 2, side / 2), float(rng.uniform(-45, 45)), 1.0)
    canvas = cv2.warpAffine(canvas, rot, (side, side), flags=cv2.INTER_NEAREST)
    pmask = cv2.warpAffine(pmask, rot, (side, side), flags=cv2.INTER_NEAREST) > 0.5
    side_h, side_w = min(side, H), min(side, W)
    canvas, pmask = canvas[:side_h, :side_w], pmask[:side_h, :side_w]
    dy, dx = int(rng.integers(0, H - side_h + 1)), int(rng.integers(0, W - side_w + 1))
    out = image.copy()
    region = out[dy : dy + side_h, dx : dx + side_w]
    region[pmask] = canvas[pmask]
    mask = np.zeros((H, W), bool)
    mask[dy : dy + side_h, dx : dx + side_w] = pmask
    return GeneratedDefect(out.astype(np.float32), mask, "scar")


GENERATORS: dict[str, Callable[..., GeneratedDefect]] = {
    "blur": blur,
    "rectangle": rectangle,
    "thin_rectangle": thin_rectangle,
    "draem": draem,
    "cutpaste": cutpaste,
    "scar": scar,
}


def generate_defects(
    images: list[np.ndarray],
    segments: list[np.ndarray],
    n: int,
    seed: int,
    kinds: tuple[str, ...] = DEFECT_KINDS,
) -> list[GeneratedDefect]:
    """``n`` defects, cycling through ``kinds``, each on a random source image (another one as texture)."""
    unknown = set(kinds) - set(GENERATORS)
    if unknown:
        raise InputError(f"unknown defect kinds {sorted(unknown)}; choose from {', '.join(DEFECT_KINDS)}")
    if n and not images:
        raise InputError("generating defects needs at least one good image")
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        src = int(rng.integers(len(images)))
        other = images[int(rng.integers(len(images)))]
        for _ in range(10):  # a defect that changes no pixel teaches nothing: draw again
            d = GENERATORS[kind](images[src], segments[src], rng, texture=other)
            if d.mask.any() and not np.allclose(d.image[d.mask], images[src][d.mask], atol=1e-3):
                break
        out.append(GeneratedDefect(d.image, d.mask, d.kind, src))
    return out
