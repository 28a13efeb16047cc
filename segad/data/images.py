"""Image, mask and segment-map reading: any bit depth or channel count in, one tensor layout out."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from detectors import backbones
from segad.data.samples import DatasetError

IMAGENET_MEAN = np.array(backbones.IMAGENET_MEAN, np.float32)  # the backbones' normalisation, one source
IMAGENET_STD = np.array(backbones.IMAGENET_STD, np.float32)


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


def read_rgb(path: str | Path) -> np.ndarray:
    """(H, W, 3) float32 RGB in [0, 1] from grey, RGB or RGBA files of 8 or 16 bits."""
    arr = _read(path)
    if arr.dtype == np.uint8:
        scale = 255.0
    elif arr.dtype == np.uint16:
        scale = 65535.0
    elif np.issubdtype(arr.dtype, np.floating):
        scale = 1.0
    else:
        raise ImageReadError(f"{path}: pixel type {arr.dtype} is not supported (use 8 or 16 bit)")
    img = arr.astype(np.float32) / scale
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    elif img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    elif img.shape[2] == 4:  # composite on black: transparent areas are not product
        img = img[:, :, :3] * img[:, :, 3:4]
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    elif img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    else:
        raise ImageReadError(f"{path}: {img.shape[2]} channels is not supported (use grey, RGB or RGBA)")
    return np.clip(img, 0.0, 1.0)


def resize(img: np.ndarray, size: int | tuple[int, int], nearest: bool = False) -> np.ndarray:
    h, w = (size, size) if isinstance(size, int) else size
    if img.shape[:2] == (h, w):
        return img
    interp = cv2.INTER_NEAREST if nearest else (cv2.INTER_AREA if img.shape[0] > h else cv2.INTER_LINEAR)
    return cv2.resize(img, (w, h), interpolation=interp)


def normalise(img: np.ndarray) -> np.ndarray:
    """ImageNet normalisation, (H, W, 3) -> (3, H, W) float32."""
    return np.ascontiguousarray(((img - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1), dtype=np.float32)


def load_image(path: str | Path, size: int | tuple[int, int]) -> np.ndarray:
    """A model-ready (3, H, W) float32 array."""
    return normalise(resize(read_rgb(path), size))


def load_images(paths: Sequence[str | Path], size: int | tuple[int, int]) -> np.ndarray:
    """(N, 3, H, W) float32; every image resized to ``size`` so mixed sources stack."""
    out = np.empty((len(paths), 3, *((size, size) if isinstance(size, int) else size)), np.float32)
    for i, p in enumerate(paths):
        out[i] = load_image(p, size)
    return out


def load_mask(path: str | Path | None, size: int | tuple[int, int]) -> np.ndarray:
    """(H, W) bool at ``size``; ``None`` (a good image) gives an empty mask. Any non-zero pixel is defect."""
    h, w = (size, size) if isinstance(size, int) else size
    if path is None:
        return np.zeros((h, w), bool)
    arr = _read(path)
    if arr.ndim == 3:
        arr = arr.max(axis=2)
    return resize((arr > 0).astype(np.uint8), (h, w), nearest=True).astype(bool)


def load_segments(path: str | Path, size: int | tuple[int, int]) -> np.ndarray:
    """(H, W) int32 component labels, resized by nearest neighbour so labels never blend."""
    arr = _read(path)
    if arr.ndim == 3:
        raise ImageReadError(f"{path}: a segment map must be a single-channel label image, got {arr.shape[2]} channels")
    return resize(arr, size, nearest=True).astype(np.int32)
