"""Real texture photographs with planted defects, in the MVTec layout: the built-in ``textures`` set.

The surfaces are scikit-image's 512x512 grey photographs of brick, gravel and grass
(``skimage.data.brick()`` etc.). Each image is a random crop of one of them (``crop`` pixels, resized
to ``image_size``), flipped and rotated by a random multiple of 90 degrees. Defects are planted on a
clean crop, each with its mask: the defect's region (for a soft-edged one, where at least half its
effect is applied; for the fold, where the texture moves by half a pixel or more). A soft edge of up
to a few pixels may reach beyond the mask; nothing else in the crop changes.

- ``scratch``: a thin bright or dark polyline;
- ``stain``: a smooth blob, darker or brighter, with a soft edge;
- ``hole``: a dark filled ellipse, shaded towards its rim;
- ``fold``: a crease, the texture pushed sideways across a short line (a local warp);
- ``foreign``: a patch of the same photograph from elsewhere, rotated and rescaled;
- ``contrast``: the texture's local contrast flattened or boosted.

Grey-level changes are in units of the crop's own spread (its standard deviation) times the spec's
``strength``; the fold's push and the foreign patch's rescaling grow with it too, the sizes do not.
A busy texture hides a defect better than a plain one, so each category has
its own default strength (``DEFAULT_STRENGTH``), chosen so that PaDiM's image AUROC on the default
spec lies between about 0.8 and 0.98 on each: neither trivial nor hopeless.

Crop positions are drawn once per spec and category from one generator, test ones kept off every
training position, so no test image equals a training image; the defect on test image ``i`` of a
type comes from a generator seeded by the spec's seed, the category, the type and ``i``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

import cv2
import numpy as np

from detectors.errors import InputError
from segad.data.mvtec import generated_set, load_mvtec, spec_key, write_samples
from segad.data.samples import GOOD, Dataset, DatasetError, Split

TEXTURE_CATEGORIES = ("brick", "gravel", "grass")
TEXTURE_DEFECT_TYPES = ("scratch", "stain", "hole", "fold", "foreign", "contrast")
# Busier textures hide a defect of the same size and contrast better, so their defects are planted
# stronger by default. Measured with PaDiM at 128 px on the default spec: brick 0.87, gravel 0.84,
# grass 0.83 image AUROC (strength 1: about 0.75, 0.56, 0.53); grass with seeds 1 and 2: 0.80, 0.83.
DEFAULT_STRENGTH = {"brick": 1.5, "gravel": 3.0, "grass": 7.0}
GENERATOR_VERSION = 1  # part of the cache folder's name: raise it when the pixels of a spec change
_MIN_GAP = 4  # a test crop starts at least this many photograph pixels (x or y) from every training crop


@dataclass(frozen=True)
class TextureSpec:
    image_size: int = 128  # side of the written images
    crop: int = 128  # side of the crop taken from the 512x512 photograph, resized to image_size
    n_train: int = 200
    n_test_good: int = 60
    n_defects_per_type: int = 12
    strength: float | None = None  # how far defects depart from the texture; None: DEFAULT_STRENGTH
    seed: int = 0

    def key(self) -> str:
        return spec_key(self)

    def strength_for(self, category: str) -> float:
        return DEFAULT_STRENGTH[category] if self.strength is None else self.strength


@dataclass(frozen=True)
class TextureImage:
    image: np.ndarray  # (H, W) uint8 grey
    mask: np.ndarray  # (H, W) bool, all False for good images
    clean: np.ndarray  # (H, W) uint8: the same crop before the defect was planted
    defect_type: str
    split: Split


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
        raise InputError(f"TextureSpec.crop must be between 8 and {min(photo.shape)}, got {spec.crop}")
    if spec.image_size < 32:
        raise InputError(f"TextureSpec.image_size must be at least 32, got {spec.image_size}")
    if spec.n_train < 1 or spec.n_test_good < 0 or spec.n_defects_per_type < 0:
        raise InputError("TextureSpec needs n_train >= 1 and non-negative test counts")
    if spec.strength is not None and not spec.strength > 0:
        raise InputError(f"TextureSpec.strength must be positive (or None), got {spec.strength}")


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
        raise InputError(f"crop {spec.crop} leaves no test position away from {spec.n_train} training crops")

    def draw_test() -> Position:
        i = int(rng.integers(len(free_y)))
        return int(free_x[i]), int(free_y[i]), int(rng.integers(8))

    out: dict[tuple[str, str], tuple[Position, ...]] = {(Split.TRAIN, GOOD): train}
    out[(Split.TEST, GOOD)] = tuple(draw_test() for _ in range(spec.n_test_good))
    for kind in TEXTURE_DEFECT_TYPES:
        out[(Split.TEST, kind)] = tuple(draw_test() for _ in range(spec.n_defects_per_type))
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


def _scratch(clean: np.ndarray, rng: np.random.Generator, k: float) -> tuple[np.ndarray, np.ndarray]:
    """A bent line about s/48 px wide, brighter or darker than the texture around it."""
    s = clean.shape[0]
    n = int(rng.integers(3, 6))
    step = rng.uniform(0.08, 0.13) * s
    angle = rng.uniform(0, 2 * np.pi)
    pts = [rng.uniform(0.3 * s, 0.7 * s, size=2)]
    for _ in range(n - 1):
        angle += rng.normal(0, 0.35)
        pts.append(np.clip(pts[-1] + step * np.array([np.cos(angle), np.sin(angle)]), 2, s - 3))
    mask = np.zeros((s, s), np.uint8)
    cv2.polylines(mask, [np.round(np.array(pts)).astype(np.int32)], False, 1, max(1, round(s / 48)), cv2.LINE_8)
    m = mask.astype(bool)
    img = clean.copy()
    img[m] += k * rng.uniform(0.8, 1.2) * _spread(clean) * rng.choice([-1.0, 1.0])
    return img, m


def _stain(clean: np.ndarray, rng: np.random.Generator, k: float) -> tuple[np.ndarray, np.ndarray]:
    """A soft-edged blob shifted darker or brighter."""
    s = clean.shape[0]
    weight = _blob(s, rng, radius=rng.uniform(0.10, 0.14) * s, edge=max(3.0, 0.05 * s))
    amp = k * rng.uniform(0.4, 0.6) * _spread(clean) * rng.choice([-1.0, 1.0])
    return clean + amp * weight, weight >= 0.5


def _hole(clean: np.ndarray, rng: np.random.Generator, k: float) -> tuple[np.ndarray, np.ndarray]:
    """A dark ellipse, darker than the texture's own shadows, lighter towards its rim."""
    s = clean.shape[0]
    a, b = rng.uniform(0.05, 0.08, size=2) * s
    margin = max(a, b) + 2
    cx, cy = rng.uniform(margin, s - margin, size=2)
    theta = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    u = ((xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)) / a
    v = (-(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)) / b
    r = np.sqrt(u * u + v * v)
    m = r <= 1.0
    dark = np.percentile(clean, 5) - k * rng.uniform(0.2, 0.5) * _spread(clean)
    floor = dark + 0.3 / k * (clean - clean.mean())  # the texture still faintly shows through
    img = clean.copy()
    img[m] = (floor + 0.25 * r * (clean - floor))[m]
    return img, m


def _fold(clean: np.ndarray, rng: np.random.Generator, k: float) -> tuple[np.ndarray, np.ndarray]:
    """A crease: texture pushed sideways across a short line (pixels near it come from further along),
    shaded by the slope of the push, as light falls on a fold."""
    s = clean.shape[0]
    half = rng.uniform(0.16, 0.24) * s
    width = rng.uniform(0.04, 0.06) * s
    amp = k * rng.uniform(0.05, 0.07) * s * rng.choice([-1.0, 1.0])
    margin = half + 2 * width
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
    slope = np.gradient(disp, axis=0) * nrm[1] + np.gradient(disp, axis=1) * nrm[0]  # d disp / d across
    warped += 0.3 * _spread(clean) * slope
    img = np.where(np.abs(disp) > 0.05, warped, clean)  # further out the shift is far below a pixel
    return img, np.abs(disp) >= 0.5


def _foreign(
    clean: np.ndarray, rng: np.random.Generator, k: float, spec: TextureSpec, category: str
) -> tuple[np.ndarray, np.ndarray]:
    """A patch of the photograph from elsewhere, turned by 20-70 degrees and rescaled (by 0.6-0.75 or
    1.4-1.7 to the power ``k``, kept within 0.4-2.5), at the crop's mean brightness: the texture differs."""
    s = clean.shape[0]
    photo = photograph(category).astype(np.float32)
    zoom = float(np.clip(rng.choice([rng.uniform(0.6, 0.75), rng.uniform(1.4, 1.7)]) ** k, 0.4, 2.5))
    scale = spec.crop / s * zoom  # photograph pixels per output pixel
    angle = np.deg2rad(rng.uniform(20, 70) * rng.choice([-1.0, 1.0]))
    reach = scale * s / np.sqrt(2) + 2  # half the diagonal of the source window, in photograph pixels
    h, w = photo.shape
    px = rng.uniform(min(reach, w / 2), max(w - reach, w / 2))
    py = rng.uniform(min(reach, h / 2), max(h - reach, h / 2))
    c, si = np.cos(angle) * scale, np.sin(angle) * scale
    # output (u, v) -> photograph: the output's centre on (px, py), turned and scaled
    m = np.array([[c, -si, px - c * s / 2 + si * s / 2], [si, c, py - si * s / 2 - c * s / 2]], np.float32)
    src = cv2.warpAffine(photo, m, (s, s), flags=cv2.INTER_AREA | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT)
    src += float(clean.mean() - src.mean())
    weight = _blob(s, rng, radius=rng.uniform(0.10, 0.14) * s, edge=2.0)
    return clean + weight * (src - clean), weight >= 0.5


def _contrast(clean: np.ndarray, rng: np.random.Generator, k: float) -> tuple[np.ndarray, np.ndarray]:
    """A soft-edged blob where the texture's local contrast is flattened or boosted (gain kept in 0.1-3)."""
    s = clean.shape[0]
    weight = _blob(s, rng, radius=rng.uniform(0.10, 0.14) * s, edge=max(3.0, 0.04 * s))
    local_mean = cv2.GaussianBlur(clean, (0, 0), max(2.0, s / 40))
    gain = rng.uniform(0.45, 0.6) if rng.random() < 0.5 else rng.uniform(1.6, 1.9)
    gain = float(np.clip(gain**k, 0.1, 3.0))
    return local_mean + gain**weight * (clean - local_mean), weight >= 0.5


def plant(
    kind: str, clean: np.ndarray, rng: np.random.Generator, spec: TextureSpec, category: str
) -> tuple[np.ndarray, np.ndarray]:
    """(float image, bool mask) of a ``kind`` defect planted on the float crop ``clean``."""
    k = spec.strength_for(category)
    if kind == "scratch":
        return _scratch(clean, rng, k)
    if kind == "stain":
        return _stain(clean, rng, k)
    if kind == "hole":
        return _hole(clean, rng, k)
    if kind == "fold":
        return _fold(clean, rng, k)
    if kind == "foreign":
        return _foreign(clean, rng, k, spec, category)
    if kind == "contrast":
        return _contrast(clean, rng, k)
    raise InputError(f"unknown texture defect type {kind!r}; choose from {TEXTURE_DEFECT_TYPES}")


def _finish(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def render(
    spec: TextureSpec, category: str, index: int, defect_type: str = GOOD, split: Split = Split.TEST
) -> TextureImage:
    """Image number ``index`` of a (split, type); the same arguments always give the same pixels."""
    split = Split(split)
    if split == Split.TRAIN and defect_type != GOOD:
        raise InputError(f"the train split holds good images only, not {defect_type!r}")
    if defect_type != GOOD and defect_type not in TEXTURE_DEFECT_TYPES:
        raise InputError(f"unknown texture defect type {defect_type!r}; choose from {TEXTURE_DEFECT_TYPES}")
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
    out = [render(spec, category, i, GOOD, Split.TRAIN) for i in range(spec.n_train)]
    out += [render(spec, category, i, GOOD, Split.TEST) for i in range(spec.n_test_good)]
    out += [render(spec, category, i, t) for t in TEXTURE_DEFECT_TYPES for i in range(spec.n_defects_per_type)]
    return out


def write_mvtec(spec: TextureSpec, category: str, root: str | Path) -> Path:
    """Write one category in the MVTec layout under ``root/category``; grey 8-bit PNGs."""
    return write_samples(Path(root) / category, generate(spec, category))


def load_textures(
    category: str = "brick", spec: TextureSpec | None = None, cache_dir: str | Path | None = None
) -> Dataset:
    """The built-in ``textures`` dataset: written once per spec and category into the cache, then read."""
    if category not in TEXTURE_CATEGORIES:
        raise DatasetError(f"the textures dataset has the categories {', '.join(TEXTURE_CATEGORIES)}; got {category!r}")
    spec = spec or TextureSpec()
    # Keyed by the strength in force, not None: a new default strength must not reuse old pixels.
    resolved = replace(spec, strength=spec.strength_for(category))
    folder = f"textures-v{GENERATOR_VERSION}-{category}-{resolved.key()}"
    root = generated_set(folder, cache_dir, lambda tmp: write_mvtec(spec, category, tmp))
    return load_mvtec(root, category, name="textures")
