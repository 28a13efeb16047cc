"""Real texture photographs with planted defects, in the MVTec layout: the built-in ``textures`` set.

The surfaces are scikit-image's 512x512 grey photographs of brick, gravel and grass
(``skimage.data.brick()`` etc.). Each image is a random crop of one of them (``crop`` pixels, resized
to ``image_size``), flipped and rotated by a random multiple of 90 degrees. Defects are planted on a
clean crop, each with the mask of the pixels it changes:

- ``scratch``: a thin bright or dark polyline;
- ``stain``: a smooth blob, darker or brighter, with a soft edge;
- ``hole``: a dark filled ellipse, shaded towards its rim;
- ``fold``: a crease, the texture pushed sideways across a short line (a local warp);
- ``foreign``: a patch of the same photograph from elsewhere, rotated and rescaled;
- ``contrast``: the texture's local contrast flattened or boosted.

Intensity changes are scaled to the crop's own grey-level spread, so a defect stands out about as
much as the texture varies. Crop positions are drawn once per spec and category from one generator,
test ones kept off every training position, so no test image equals a training image; the defects
of image ``i`` come from a generator seeded by the spec's seed, the category, the type and ``i``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import cv2
import numpy as np

from segad.data.mvtec import load_mvtec
from segad.data.samples import GOOD, Dataset, DatasetError

TEXTURE_CATEGORIES = ("brick", "gravel", "grass")
TEXTURE_DEFECT_TYPES = ("scratch", "stain", "hole", "fold", "foreign", "contrast")
_MIN_GAP = 4  # a test crop starts at least this many photograph pixels (x or y) from every training crop


@dataclass(frozen=True)
class TextureSpec:
    image_size: int = 128  # side of the written images
    crop: int = 128  # side of the crop taken from the 512x512 photograph, resized to image_size
    n_train: int = 200
    n_test_good: int = 60
    n_defects_per_type: int = 12
    seed: int = 0

    def key(self) -> str:
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class TextureImage:
    image: np.ndarray  # (H, W) uint8 grey
    mask: np.ndarray  # (H, W) bool, all False for good images
    clean: np.ndarray  # (H, W) uint8: the same crop before the defect was planted
    defect_type: str
    split: str  # "train" or "test"


@cache
def photograph(category: str) -> np.ndarray:
    """The category's 512x512 grey photograph (uint8), read from scikit-image's bundled files."""
    if category not in TEXTURE_CATEGORIES:
        raise DatasetError(f"the textures dataset has the categories {', '.join(TEXTURE_CATEGORIES)}; got {category!r}")
    try:
        import skimage.data
    except ImportError as e:  # pragma: no cover - it is a hard dependency
        raise DatasetError("the textures dataset needs scikit-image: pip install 'scikit-image>=0.22'") from e
    img = np.asarray(getattr(skimage.data, category)())
    if img.ndim == 3:
        img = cv2.cvtColor(img[..., :3], cv2.COLOR_RGB2GRAY)
    img = np.ascontiguousarray(img, dtype=np.uint8)
    img.setflags(write=False)  # shared by every caller through the cache
    return img


# ---------------------------------------------------------------------------------------------- crops

Position = tuple[int, int, int]  # x, y of the crop in the photograph, orientation 0..7


def _check(spec: TextureSpec, photo: np.ndarray) -> None:
    if not 8 <= spec.crop <= min(photo.shape):
        raise ValueError(f"TextureSpec.crop must be between 8 and {min(photo.shape)}, got {spec.crop}")
    if spec.image_size < 32:
        raise ValueError(f"TextureSpec.image_size must be at least 32, got {spec.image_size}")
    if spec.n_train < 1 or spec.n_test_good < 0 or spec.n_defects_per_type < 0:
        raise ValueError("TextureSpec needs n_train >= 1 and non-negative test counts")


@cache
def positions(spec: TextureSpec, category: str) -> dict[tuple[str, str], tuple[Position, ...]]:
    """Crop positions for every (split, type), drawn in a fixed order from one generator.

    Training positions are free; every test position (good or defective) starts at least ``_MIN_GAP``
    pixels away from all training ones, so a test image is never a training image.
    """
    photo = photograph(category)
    _check(spec, photo)
    h, w = photo.shape
    cat_id = TEXTURE_CATEGORIES.index(category)
    rng = np.random.default_rng([spec.seed, cat_id, 0])

    def draw() -> Position:
        return int(rng.integers(0, w - spec.crop + 1)), int(rng.integers(0, h - spec.crop + 1)), int(rng.integers(8))

    train = tuple(draw() for _ in range(spec.n_train))
    taken = np.zeros((h, w), bool)
    for x, y, _ in train:
        taken[max(0, y - _MIN_GAP + 1) : y + _MIN_GAP, max(0, x - _MIN_GAP + 1) : x + _MIN_GAP] = True
    free_y, free_x = np.nonzero(~taken[: h - spec.crop + 1, : w - spec.crop + 1])
    if not len(free_y):
        raise ValueError(f"crop {spec.crop} leaves no test position away from {spec.n_train} training crops")

    def draw_test() -> Position:
        i = int(rng.integers(len(free_y)))
        return int(free_x[i]), int(free_y[i]), int(rng.integers(8))

    out: dict[tuple[str, str], tuple[Position, ...]] = {("train", GOOD): train}
    out[("test", GOOD)] = tuple(draw_test() for _ in range(spec.n_test_good))
    for kind in TEXTURE_DEFECT_TYPES:
        out[("test", kind)] = tuple(draw_test() for _ in range(spec.n_defects_per_type))
    return out


def _orient(img: np.ndarray, orientation: int) -> np.ndarray:
    img = np.rot90(img, orientation % 4)
    return np.ascontiguousarray(img[:, ::-1] if orientation >= 4 else img)


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    if img.shape[0] == size:
        return img
    interp = cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_CUBIC
    return cv2.resize(img, (size, size), interpolation=interp)


def crop_image(spec: TextureSpec, category: str, pos: Position) -> np.ndarray:
    """(image_size, image_size) float32 grey crop at ``pos``, oriented and resized."""
    x, y, orientation = pos
    patch = photograph(category)[y : y + spec.crop, x : x + spec.crop].astype(np.float32)
    return _resize(_orient(patch, orientation), spec.image_size)


# -------------------------------------------------------------------------------------------- defects


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _blob(s: int, rng: np.random.Generator, radius: float, edge: float) -> np.ndarray:
    """A soft, irregular blob: weight 1 inside, falling to 0 across ``edge`` pixels; inside the image."""
    margin = radius + edge + 2
    cx, cy = rng.uniform(margin, s - margin, size=2)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    ang = np.arctan2(yy - cy, xx - cx)
    r_edge = np.full_like(ang, radius)
    for k in (2, 3, 5):  # a wobbly outline rather than a perfect ellipse
        r_edge += radius * rng.uniform(0.04, 0.14) * np.cos(k * ang + rng.uniform(0, 2 * np.pi))
    dist = np.hypot(xx - cx, yy - cy)
    return _smoothstep((r_edge + edge / 2 - dist) / edge)


def _spread(clean: np.ndarray) -> float:
    return float(np.std(clean))


def _scratch(clean: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    s = clean.shape[0]
    n = int(rng.integers(3, 6))
    step = rng.uniform(0.08, 0.13) * s
    angle = rng.uniform(0, 2 * np.pi)
    pts = [rng.uniform(0.3 * s, 0.7 * s, size=2)]
    for _ in range(n - 1):
        angle += rng.normal(0, 0.35)
        pts.append(np.clip(pts[-1] + step * np.array([np.cos(angle), np.sin(angle)]), 2, s - 3))
    mask = np.zeros((s, s), np.uint8)
    thickness = 1 if s < 96 or rng.random() < 0.5 else 2
    cv2.polylines(mask, [np.round(np.array(pts)).astype(np.int32)], False, 1, thickness, cv2.LINE_8)
    m = mask.astype(bool)
    amp = rng.uniform(0.8, 1.3) * _spread(clean) * rng.choice([-1.0, 1.0])
    img = clean.copy()
    img[m] += amp
    return img, m


def _stain(clean: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    s = clean.shape[0]
    weight = _blob(s, rng, radius=rng.uniform(0.08, 0.12) * s, edge=max(3.0, 0.05 * s))
    amp = rng.uniform(0.5, 0.8) * _spread(clean) * rng.choice([-1.0, 1.0])
    return clean + amp * weight, weight >= 0.5


def _hole(clean: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    s = clean.shape[0]
    a, b = rng.uniform(0.04, 0.07, size=2) * s
    margin = max(a, b) + 2
    cx, cy = rng.uniform(margin, s - margin, size=2)
    theta = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    u = ((xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)) / a
    v = (-(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)) / b
    r = np.sqrt(u * u + v * v)
    m = r <= 1.0
    dark = np.percentile(clean, 5) - rng.uniform(0.3, 0.8) * _spread(clean)  # darker than its shadows
    floor = dark + 0.3 * (clean - clean.mean())  # the texture still faintly shows through
    shade = 0.25 * r  # lighter towards the rim
    img = clean.copy()
    img[m] = (floor + shade * (clean - floor))[m]
    return img, m


def _fold(clean: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Texture pushed sideways across a short crease: pixels near the line come from further along."""
    s = clean.shape[0]
    half = rng.uniform(0.14, 0.22) * s
    width = rng.uniform(0.04, 0.06) * s
    amp = rng.uniform(0.06, 0.09) * s * rng.choice([-1.0, 1.0])
    margin = half + 3 * width
    cx, cy = rng.uniform(min(margin, s / 2), max(s - margin, s / 2), size=2)
    theta = rng.uniform(0, np.pi)
    t = np.array([np.cos(theta), np.sin(theta)], np.float32)  # along the crease
    nrm = np.array([-t[1], t[0]], np.float32)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    along = (xx - cx) * t[0] + (yy - cy) * t[1]
    across = (xx - cx) * nrm[0] + (yy - cy) * nrm[1]
    taper = np.cos(np.clip(along / half, -1, 1) * np.pi / 2) ** 2
    disp = amp * taper * np.exp(-((across / width) ** 2))
    map_x = (xx + disp * nrm[0]).astype(np.float32)
    map_y = (yy + disp * nrm[1]).astype(np.float32)
    warped = cv2.remap(clean, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    changed = np.abs(disp) >= 0.5
    img = np.where(np.abs(disp) > 1e-3, warped, clean)  # a sub-pixel shift far out is no change
    return img, changed


def _foreign(
    clean: np.ndarray, rng: np.random.Generator, spec: TextureSpec, category: str
) -> tuple[np.ndarray, np.ndarray]:
    """A patch from elsewhere in the photograph, turned by 20-70 degrees and rescaled by 0.6-0.75 or 1.4-1.7."""
    s = clean.shape[0]
    photo = photograph(category).astype(np.float32)
    scale = spec.crop / s * float(rng.choice([rng.uniform(0.6, 0.75), rng.uniform(1.4, 1.7)]))
    angle = np.deg2rad(rng.uniform(20, 70) * rng.choice([-1.0, 1.0]))
    reach = scale * s / np.sqrt(2) + 2  # half the diagonal of the source window, in photograph pixels
    h, w = photo.shape
    px = rng.uniform(min(reach, w / 2), max(w - reach, w / 2))
    py = rng.uniform(min(reach, h / 2), max(h - reach, h / 2))
    c, si = np.cos(angle) * scale, np.sin(angle) * scale
    # output (u, v) -> photograph: centre of the output on (px, py), turned and scaled
    m = np.array([[c, -si, px - c * s / 2 + si * s / 2], [si, c, py - si * s / 2 - c * s / 2]], np.float32)
    src = cv2.warpAffine(photo, m, (s, s), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT)
    src += float(clean.mean() - src.mean())  # same overall brightness: it is the texture that differs
    weight = _blob(s, rng, radius=rng.uniform(0.09, 0.13) * s, edge=2.0)
    return clean + weight * (src - clean), weight >= 0.5


def _contrast(clean: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    s = clean.shape[0]
    weight = _blob(s, rng, radius=rng.uniform(0.1, 0.14) * s, edge=max(3.0, 0.04 * s))
    local_mean = cv2.GaussianBlur(clean, (0, 0), max(2.0, s / 40))
    gain = rng.uniform(0.25, 0.45) if rng.random() < 0.5 else rng.uniform(1.8, 2.2)
    factor = 1.0 + (gain - 1.0) * weight
    return local_mean + factor * (clean - local_mean), weight >= 0.5


def plant(
    kind: str, clean: np.ndarray, rng: np.random.Generator, spec: TextureSpec, category: str
) -> tuple[np.ndarray, np.ndarray]:
    """(float image, bool mask) of a ``kind`` defect planted on the float crop ``clean``."""
    if kind == "scratch":
        return _scratch(clean, rng)
    if kind == "stain":
        return _stain(clean, rng)
    if kind == "hole":
        return _hole(clean, rng)
    if kind == "fold":
        return _fold(clean, rng)
    if kind == "foreign":
        return _foreign(clean, rng, spec, category)
    if kind == "contrast":
        return _contrast(clean, rng)
    raise ValueError(f"unknown texture defect type {kind!r}; choose from {TEXTURE_DEFECT_TYPES}")


def _finish(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def render(spec: TextureSpec, category: str, index: int, defect_type: str = GOOD, split: str = "test") -> TextureImage:
    """Image number ``index`` of a (split, type); the same arguments always give the same pixels."""
    if split not in ("train", "test") or (split == "train" and defect_type != GOOD):
        raise ValueError(f"no {defect_type!r} images in the {split!r} split")
    pos = positions(spec, category)[(split, defect_type)][index]
    clean = crop_image(spec, category, pos)
    if defect_type == GOOD:
        img = _finish(clean)
        return TextureImage(img, np.zeros(img.shape, bool), img, GOOD, split)
    type_id = 1 + TEXTURE_DEFECT_TYPES.index(defect_type)
    rng = np.random.default_rng([spec.seed, TEXTURE_CATEGORIES.index(category), type_id, index, 1])
    img, mask = plant(defect_type, clean, rng, spec, category)
    return TextureImage(_finish(img), mask, _finish(clean), defect_type, split)


def generate(spec: TextureSpec, category: str) -> list[TextureImage]:
    out = [render(spec, category, i, GOOD, "train") for i in range(spec.n_train)]
    out += [render(spec, category, i, GOOD, "test") for i in range(spec.n_test_good)]
    out += [render(spec, category, i, t) for t in TEXTURE_DEFECT_TYPES for i in range(spec.n_defects_per_type)]
    return out


def write_mvtec(spec: TextureSpec, category: str, root: str | Path) -> Path:
    """Write one category in the MVTec layout under ``root/category``; grey 8-bit PNGs."""
    cat = Path(root) / category
    counters: dict[tuple[str, str], int] = {}
    for item in generate(spec, category):
        key = (item.split, item.defect_type)
        n = counters.get(key, 0)
        counters[key] = n + 1
        stem = f"{n:03d}"
        img_dir = cat / item.split / item.defect_type
        img_dir.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(img_dir / f"{stem}.png"), item.image)
        if item.defect_type != GOOD:
            gt_dir = cat / "ground_truth" / item.defect_type
            gt_dir.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(gt_dir / f"{stem}_mask.png"), item.mask.astype(np.uint8) * 255)
    return cat


def load_textures(
    category: str = "brick", spec: TextureSpec | None = None, cache_dir: str | Path | None = None
) -> Dataset:
    """The built-in ``textures`` dataset: written once per spec and category into the cache, then read."""
    from segad.paths import cache_root

    if category not in TEXTURE_CATEGORIES:
        raise DatasetError(f"the textures dataset has the categories {', '.join(TEXTURE_CATEGORIES)}; got {category!r}")
    spec = spec or TextureSpec()
    base = Path(cache_dir) if cache_dir is not None else cache_root() / "datasets"
    root = base / f"textures-{category}-{spec.key()}"
    if not root.is_dir():
        base.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".textures-{category}-", dir=base))
        try:
            write_mvtec(spec, category, tmp)
            os.replace(tmp, root)  # atomic: a reader never sees a half-written set
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not root.is_dir():  # a concurrent writer did not win the race either
                raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return load_mvtec(root, category, name="textures")
