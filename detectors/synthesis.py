"""Synthetic anomalies shared by the trainable detectors and SegAD's defect generator.

DRAEM's recipe (Zavrtanik et al., ICCV 2021): a Perlin-noise mask decides *where*, a texture image
decides *what*, and a random opacity ``beta`` blends it in. It lives here, below both ``detectors``
and ``segad``, so DRAEM trains on exactly the anomalies SegAD's classifier is shown. Plain numpy
(and OpenCV for the rotation); every draw comes from the ``np.random.Generator`` passed in, so a
seed reproduces the output.
"""

from __future__ import annotations

import cv2
import numpy as np

MAX_BETA = 0.8  # DRAEM never blends the texture at less than 20 % opacity
PERLIN_MAX_EXPONENT = 6  # 2^0 .. 2^5 noise cells per axis, as in the paper
PERLIN_THRESHOLD = 0.5


def perlin_noise(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2-D gradient (Perlin) noise in about [-1, 1]; ``res`` cells per axis."""
    h, w = shape
    ry, rx = res
    angles = rng.uniform(0, 2 * np.pi, (ry + 1, rx + 1))
    grads = np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    ys = np.linspace(0, ry, h, endpoint=False)
    xs = np.linspace(0, rx, w, endpoint=False)
    yi, xi = np.floor(ys).astype(int), np.floor(xs).astype(int)
    yf, xf = (ys - yi)[:, None], (xs - xi)[None, :]

    def corner(dy: int, dx: int) -> np.ndarray:
        g = grads[yi[:, None] + dy, xi[None, :] + dx]
        return g[..., 0] * (yf - dy) + g[..., 1] * (xf - dx)

    def fade(t: np.ndarray) -> np.ndarray:
        return 6 * t**5 - 15 * t**4 + 10 * t**3

    u, v = fade(xf), fade(yf)
    top = corner(0, 0) * (1 - u) + corner(0, 1) * u
    bottom = corner(1, 0) * (1 - u) + corner(1, 1) * u
    return np.sqrt(2) * (top * (1 - v) + bottom * v)


def perlin_mask(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """DRAEM's (H, W) bool mask: Perlin noise at 2^randint(0, 6) cells per axis, rotated, > 0.5.

    Redrawn (up to 20 times) while empty, because an empty mask is no anomaly at all.
    """
    for _ in range(20):
        res = (2 ** int(rng.integers(0, PERLIN_MAX_EXPONENT)), 2 ** int(rng.integers(0, PERLIN_MAX_EXPONENT)))
        noise = perlin_noise(shape, res, rng)
        centre = (shape[1] / 2, shape[0] / 2)
        rot = cv2.getRotationMatrix2D(centre, float(rng.uniform(-90, 90)), 1.0)
        noise = cv2.warpAffine(noise.astype(np.float32), rot, (shape[1], shape[0]), borderMode=cv2.BORDER_REFLECT)
        mask = noise > PERLIN_THRESHOLD
        if mask.any():
            return mask
    raise RuntimeError("Perlin mask stayed empty after 20 draws")  # pragma: no cover - vanishingly unlikely


def draw_beta(rng: np.random.Generator) -> float:
    """DRAEM's opacity draw, beta = U(0, 1) * 0.8 (kept as that product so seeded outputs never move)."""
    return rng.uniform(0, 1) * MAX_BETA


def draem_blend(image: np.ndarray, texture: np.ndarray, mask: np.ndarray, beta: float) -> np.ndarray:
    """``I*(1-M) + (1-beta)*A*M + beta*I*M``: the texture ``A`` shows through ``image`` under the mask.

    ``image`` and ``texture`` are (H, W, C) (or (H, W)) floats of one shape; ``mask`` is (H, W), bool or
    float. Pixels outside the mask are returned unchanged.
    """
    if texture.shape != image.shape:
        raise ValueError(f"texture shape {texture.shape} differs from image shape {image.shape}; resize it first")
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match the image's (H, W) {image.shape[:2]}")
    m = mask.astype(np.float32)
    if image.ndim == 3:
        m = m[..., None]
    return image * (1 - m) + (1 - beta) * texture * m + beta * image * m


def jitter_texture(texture: np.ndarray, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Another good image made into a texture: rotated 90/180/270, maybe flipped, shifted, colour-jittered.

    Without the geometric change another good image pasted at the same place would look normal,
    which would teach the segmenter to flag normal structure. Grey images stay grey.
    """
    h, w = shape
    t = np.rot90(texture, int(rng.integers(1, 4)))
    if rng.random() < 0.5:
        t = t[:, ::-1]
    t = cv2.resize(np.ascontiguousarray(t, dtype=np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    t = np.roll(t, (int(rng.integers(h)), int(rng.integers(w))), axis=(0, 1))
    coloured = t.ndim == 3 and t.shape[-1] > 1 and float(np.abs(np.diff(t[::4, ::4], axis=-1)).max()) > 1e-3
    gain = rng.uniform(0.6, 1.4) * (rng.uniform(0.85, 1.15, t.shape[-1]) if coloured else 1.0)
    t = np.clip(t * gain + rng.uniform(-0.2, 0.2), 0.0, 1.0) ** rng.uniform(0.5, 2.0)
    if rng.random() < 0.2:
        t = 1.0 - t
    return t.astype(np.float32)


__all__ = ["MAX_BETA", "draem_blend", "draw_beta", "jitter_texture", "perlin_mask", "perlin_noise"]
