"""Images -> anomaly maps: fit each detector (or reuse its cached fit) and predict only what is missing."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from detectors.base import Detector
from detectors.cache import CacheEntry, MapCache, file_id
from detectors.errors import InputError
from detectors.training import TrainableDetector
from segad.data.images import Intensity, load_images
from segad.paths import cache_root

FLOAT16_MAX = float(np.finfo(np.float16).max)


class MapError(InputError):
    """A detector produced a map that cannot become features (NaN, infinite, or out of float16 range)."""


ImageLoader = Callable[[Sequence[int]], np.ndarray]  # indices -> (n, 3, H, W) model-ready batch


@dataclass(frozen=True)
class ImageSet:
    """Images known by content id, loaded lazily in chunks so thousands never sit in memory at once."""

    ids: tuple[str, ...]
    load: ImageLoader
    names: tuple[str, ...] = ()  # what an error message calls each image (its file); ids when empty

    def __len__(self) -> int:
        return len(self.ids)

    def name(self, i: int) -> str:
        return self.names[i] if self.names else f"image {self.ids[i]}"

    def subset(self, indices: Sequence[int]) -> ImageSet:
        """The images at ``indices``, in that order, loaded through this set's loader."""
        idx = list(indices)
        names = tuple(self.names[i] for i in idx) if self.names else ()
        return ImageSet(tuple(self.ids[i] for i in idx), lambda sub: self.load([idx[j] for j in sub]), names)

    @classmethod
    def from_paths(
        cls, paths: Sequence[str | Path], image_size: int | tuple[int, int], intensity: Intensity = "none"
    ) -> ImageSet:
        """Ids name the file's content and, when adjusted, the intensity mode: the cache keeps them apart."""
        paths = [Path(p) for p in paths]
        suffix = "" if intensity == "none" else f"-{intensity}"
        return cls(
            tuple(file_id(p) + suffix for p in paths),
            lambda idx: load_images([paths[i] for i in idx], image_size, intensity),
            tuple(str(p) for p in paths),
        )

    @classmethod
    def from_arrays(cls, images: np.ndarray) -> ImageSet:
        from detectors.cache import content_id

        ids = tuple(content_id(im) for im in images)
        return cls(ids, lambda idx: images[list(idx)], tuple(f"generated image {i}" for i in range(len(ids))))


@dataclass(frozen=True)
class DetectorMaps:
    name: str
    maps: np.ndarray  # (N, H, W) float16: what the cache stores, half the memory
    scores: np.ndarray  # (N,) float32
    fit_seconds: float  # 0 when the fit came from the cache
    predict_ms_per_image: float  # over the images actually predicted (nan when all were cached)
    cached_maps: int
    detector: Detector


def default_cache() -> MapCache:
    return MapCache(cache_root() / "maps")


def fit_detector(
    det: Detector, fit_set: ImageSet, entry: CacheEntry | None, log: Callable[[str], None] = print
) -> tuple[Detector, float]:
    """The fitted detector: the cached fit, else fitted here (while other processes sharing the cache wait
    for it and then load it: ``CacheEntry.fit_lock``), and cached."""
    if entry is None:
        return _fit(det, fit_set, None)
    if (cached := _cached_fit(det, entry)) is not None:
        return cached, 0.0
    with entry.fit_lock(log):
        if (cached := _cached_fit(det, entry)) is not None:  # fitted by another process while this one waited
            return cached, 0.0
        return _fit(det, fit_set, entry)


def _cached_fit(det: Detector, entry: CacheEntry) -> Detector | None:
    cached = entry.load_detector()
    if cached is not None:
        cached.config = det.config  # result-neutral options (device, progress, checkpoints) are the caller's
    return cached


def _fit(det: Detector, fit_set: ImageSet, entry: CacheEntry | None) -> tuple[Detector, float]:
    auto_checkpoints = None
    if entry is not None and isinstance(det, TrainableDetector) and not det.config.checkpoint_dir:
        # Checkpoints beside the cached maps: a fit killed half-way resumes on the next run.
        auto_checkpoints = entry.path / "checkpoints"
        det = type(det)(replace(det.config, checkpoint_dir=str(auto_checkpoints)))
    t0 = time.perf_counter()
    det.fit(fit_set.load(range(len(fit_set))))
    seconds = time.perf_counter() - t0
    if entry is not None:
        entry.save_detector(det)
    if auto_checkpoints is not None:
        shutil.rmtree(auto_checkpoints, ignore_errors=True)  # the saved detector supersedes them
    return det, seconds


def check_maps(detector: str, maps: np.ndarray, names: Sequence[str]) -> None:
    """A NaN or infinite map, or one beyond float16's range (the cache's precision), is an error naming
    the detector and the image: it must never become a silent feature."""
    flat = np.asarray(maps, np.float32).reshape(len(maps), -1)
    bad = ~np.isfinite(flat).all(axis=1) | (np.abs(np.nan_to_num(flat)).max(axis=1) > FLOAT16_MAX)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        what = "NaN or infinite values" if not np.isfinite(flat[i]).all() else f"values beyond +-{FLOAT16_MAX:g}"
        raise MapError(
            f"{detector}: the anomaly map of {names[i]} has {what} ({int(bad.sum())} of {len(maps)} images); "
            "check the image and the detector's options (a lower learning rate, another backbone)"
        )


def as_stored(maps: np.ndarray) -> np.ndarray:
    """Maps at the precision training sees them (the cache's float16), so deployed features equal trained ones."""
    return np.asarray(maps).astype(np.float16)


def predict_maps(
    det: Detector,
    images: ImageSet,
    image_size: tuple[int, int],
    entry: CacheEntry | None,
    fit_seconds: float = 0.0,
    chunk: int = 64,
) -> DetectorMaps:
    """Maps and scores of ``images`` from a fitted ``det``: cached ones read, the rest predicted and stored."""
    n = len(images)
    maps = np.empty((n, *image_size), np.float16)
    scores = np.empty(n, np.float32)
    todo: list[int] = []
    for i, image_id in enumerate(images.ids):
        hit = entry.get(image_id) if entry is not None else None
        if hit is None:
            todo.append(i)
        else:
            maps[i], scores[i] = hit
    t0 = time.perf_counter()
    starts = range(0, len(todo), chunk)
    for s in tqdm(
        starts, desc=f"{det.name} maps", unit="chunk", leave=False, disable=None if len(starts) > 1 else True
    ):
        idx = todo[s : s + chunk]
        out = det.predict(images.load(idx))
        check_maps(det.name, out.maps, [images.name(i) for i in idx])
        for j, i in enumerate(idx):
            maps[i], scores[i] = as_stored(out.maps[j]), out.scores[j]
            if entry is not None:
                entry.put(images.ids[i], out.maps[j], float(out.scores[j]))
    ms = (time.perf_counter() - t0) * 1000 / len(todo) if todo else float("nan")
    return DetectorMaps(det.name, maps, scores, fit_seconds, ms, n - len(todo), det)


def compute_maps(
    det: Detector,
    fit_set: ImageSet,
    images: ImageSet,
    image_size: tuple[int, int],
    cache: MapCache | None,
    chunk: int = 64,
) -> DetectorMaps:
    """Fit ``det`` on ``fit_set`` (or reuse its cached fit), then the maps of ``images``; ``cache=None``
    recomputes all."""
    entry = cache.entry(det, image_size, fit_set.ids) if cache is not None else None
    det, fit_seconds = fit_detector(det, fit_set, entry)
    return predict_maps(det, images, image_size, entry, fit_seconds, chunk)


__all__ = [
    "DetectorMaps",
    "ImageSet",
    "MapError",
    "as_stored",
    "check_maps",
    "compute_maps",
    "default_cache",
    "fit_detector",
    "predict_maps",
]
