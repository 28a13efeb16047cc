"""Image, mask and segment-map reading: any bit depth or channel count in, one tensor layout out."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, get_args

import cv2
import numpy as np

from detectors import backbones
from detectors.errors import InputError
from segad.data.samples import DatasetError

IMAGENET_MEAN = np.array(backbones.IMAGENET_MEAN, np.float32)  # the backbones' normalisation, one source
IMAGENET_STD = np.array(backbones.IMAGENET_STD, np.float32)


# Per-image intensity adjustment before the backbone. Inspection images often differ in overall
# brightness and contrast (exposure, EL excitation current, lamp ageing) more than defects differ from
# good parts; ImageNet features see that as an anomaly. "standardise" sets each image's luminance to a
# fixed mean and spread; "clahe" equalises it locally (OpenCV's contrast-limited equalisation).
Intensity = Literal["none", "standardise", "clahe"]
INTENSITIES: tuple[str, ...] = get_args(Intensity)
_TARGET_MEAN, _TARGET_STD = 0.5, 0.15
_CLAHE_CLIP, _CLAHE_TILES = 2.0, 8


def check_intensity(value: str) -> Intensity:
    """The one check of an ``--intensity`` value, so a bad one fails before any image is read."""
    if value not in INTENSITIES:
        raise InputError(f"--intensity must be one of {', '.join(INTENSITIES)}, got {value!r}")
    return value  # type: ignore[return-value]


class ImageReadError(DatasetError):
    """A file could not be decoded as an image."""


def _read(path: str | Path) -> np.ndarray:
    path = Path(path)
    data = np.fromfile(path, np.uint8) if path.is_file() else None  # fromfile: non-ASCII paths work too
    arr = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data is not None and data.size else None
    if arr is None:
        why = "does not exist" if not path.exists() else "is not a readable image (PNG, JPEG, BMP or TIFF)"
        raise ImageReadError(f"{path} {why}; fix or remove the file")
    return arr


def image_shape(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image file from its header, without decoding the pixels."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
        return h, w
    except (OSError, ValueError):  # a format Pillow does not read: OpenCV decodes it (or names the file)
        return _read(path).shape[:2]


def read_rgb(path: str | Path) -> np.ndarray:
    """(H, W, 3) float32 RGB in [0, 1] from grey, RGB or RGBA files of 8 or 16 bits."""
    arr = _read(path)
    if arr.ndim == 3 and arr.shape[2] in (3, 4):  # OpenCV decodes to BGR(A)
        arr = arr[:, :, [2, 1, 0, 3][: arr.shape[2]]]
    return to_rgb(arr, str(path))


def to_rgb(arr: np.ndarray, what: str = "image") -> np.ndarray:
    """(H, W, 3) float32 RGB in [0, 1] from a grey, RGB or RGBA array of 8 or 16 bits or floats in [0, 1]."""
    arr = np.asarray(arr)
    if arr.ndim not in (2, 3):
        raise ImageReadError(f"{what}: an image must be (H, W) or (H, W, C), got shape {arr.shape}")
    if arr.dtype == np.uint8:
        scale = 255.0
    elif arr.dtype == np.uint16:
        scale = 65535.0
    elif np.issubdtype(arr.dtype, np.floating):
        scale = 1.0
        if not np.isfinite(arr).all():
            raise ImageReadError(f"{what}: the image holds NaN or infinite values")
    else:
        raise ImageReadError(f"{what}: pixel type {arr.dtype} is not supported (use 8 or 16 bit)")
    img = arr.astype(np.float32) / scale
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    elif img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    elif img.shape[2] == 4:  # composite on black: transparent areas are not product
        img = img[:, :, :3] * img[:, :, 3:4]
    elif img.shape[2] != 3:
        raise ImageReadError(f"{what}: {img.shape[2]} channels is not supported (use grey, RGB or RGBA)")
    return np.clip(img, 0.0, 1.0)


def resize(img: np.ndarray, size: int | tuple[int, int], nearest: bool = False) -> np.ndarray:
    h, w = (size, size) if isinstance(size, int) else size
    if img.shape[:2] == (h, w):
        return img
    interp = cv2.INTER_NEAREST if nearest else (cv2.INTER_AREA if img.shape[0] > h else cv2.INTER_LINEAR)
    return cv2.resize(img, (w, h), interpolation=interp)


def adjust_intensity(img: np.ndarray, intensity: Intensity) -> np.ndarray:
    """(H, W, 3) in [0, 1] -> the same, with the luminance adjusted; colour ratios are kept."""
    if intensity == "none":
        return img
    luma = img.mean(axis=2)
    if intensity == "standardise":
        out = (img - luma.mean()) / max(float(luma.std()), 1e-6) * _TARGET_STD + _TARGET_MEAN
    elif intensity == "clahe":
        clahe = cv2.createCLAHE(clipLimit=_CLAHE_CLIP, tileGridSize=(_CLAHE_TILES, _CLAHE_TILES))
        # On 8 bits: the clip limit is relative to the histogram's bins, and 65,536 bins of an 8-bit
        # source would clip nearly every bin, equalising the whole image flat.
        grey = np.round(luma * 255).astype(np.uint8)
        equalised = clahe.apply(grey).astype(np.float32) / 255
        out = img * (equalised / np.maximum(grey.astype(np.float32) / 255, 1 / 255))[:, :, None]
    else:
        check_intensity(intensity)  # raises: an unknown mode
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def normalise(img: np.ndarray) -> np.ndarray:
    """ImageNet normalisation, (H, W, 3) -> (3, H, W) float32."""
    return np.ascontiguousarray(((img - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1), dtype=np.float32)


def load_image(
    image: str | Path | np.ndarray, size: int | tuple[int, int], intensity: Intensity = "none"
) -> np.ndarray:
    """A model-ready (3, H, W) float32 array from a file or a raw (H, W[, C]) image array: resized, then
    intensity-adjusted, then normalised. Arrays are RGB (not OpenCV's BGR)."""
    return model_input(as_rgb(image), size, intensity)


def as_rgb(image: str | Path | np.ndarray) -> np.ndarray:
    """A file or a raw RGB array -> (H, W, 3) float32 in [0, 1], at its own size."""
    return to_rgb(image) if isinstance(image, np.ndarray) else read_rgb(image)


def model_input(rgb: np.ndarray, size: int | tuple[int, int], intensity: Intensity = "none") -> np.ndarray:
    """(H, W, 3) RGB in [0, 1] -> the (3, h, w) array the detectors take: resized, adjusted, normalised."""
    return normalise(adjust_intensity(resize(rgb, size), intensity))


def load_images(
    paths: Sequence[str | Path | np.ndarray], size: int | tuple[int, int], intensity: Intensity = "none"
) -> np.ndarray:
    """(N, 3, H, W) float32 from files or raw image arrays; every image resized to ``size`` so they stack."""
    out = np.empty((len(paths), 3, *((size, size) if isinstance(size, int) else size)), np.float32)
    for i, p in enumerate(paths):
        out[i] = load_image(p, size, intensity)
    return out


def load_mask(path: str | Path | None, size: int | tuple[int, int], image: str | Path | None = None) -> np.ndarray:
    """(H, W) bool at ``size``; ``None`` (a good image) gives an empty mask. Any non-zero pixel is defect.

    With ``image`` (the mask's image file) the two must have the same size: a mask drawn for another
    resolution, resized silently, moves pixel metrics (AUPRO) without anyone noticing."""
    h, w = (size, size) if isinstance(size, int) else size
    if path is None:
        return np.zeros((h, w), bool)
    arr = _read(path)
    if arr.ndim == 3:
        arr = arr.max(axis=2)
    if image is not None:
        ih, iw = image_shape(image)
        if arr.shape != (ih, iw):
            raise DatasetError(
                f"{path}: the mask is {arr.shape[1]}x{arr.shape[0]} but its image {image} is {iw}x{ih}; "
                "a mask must match its image pixel for pixel"
            )
        if not arr.any():
            warnings.warn(f"{path}: the mask of defect image {image} is empty", RuntimeWarning, stacklevel=2)
    return resize((arr > 0).astype(np.uint8), (h, w), nearest=True).astype(bool)


def load_segments(path: str | Path, size: int | tuple[int, int] | None) -> np.ndarray:
    """(H, W) int32 component labels, resized by nearest neighbour so labels never blend (``size=None``:
    the file's own size)."""
    arr = _read(path)
    if arr.ndim == 3:
        raise ImageReadError(f"{path}: a segment map must be a single-channel label image, got {arr.shape[2]} channels")
    return (arr if size is None else resize(arr, size, nearest=True)).astype(np.int32)
