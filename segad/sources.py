"""Where each input's anomaly maps come from: a ``MapSource``.

SegAD stacks maps; it does not care who made them. A source gives the maps and image scores of the
scored images (held-out good, then test) and of the generated defects, as ``DetectorMaps``:

- ``FittedDetector``: one of segad's detectors, fit on the good images (or taken from the map cache);
- ``FolderMaps``: maps another tool computed, read from a folder (``segad.mapfolder``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from detectors.base import Detector, DetectorConfig
from detectors.cache import CacheEntry, MapCache
from detectors.errors import InputError
from detectors.registry import detector_class
from segad.data.samples import Sample
from segad.mapfolder import GivenMaps, MapFolder
from segad.maps import DetectorMaps, ImageSet, as_stored, check_maps, fit_detector, predict_maps


@dataclass(frozen=True)
class MapRequest:
    """The images a source must give maps of, and where it may cache them."""

    fit_set: ImageSet  # the good images segad's detectors fit on
    score_set: ImageSet  # held-out good images, then the test images
    scored: Sequence[Sample]  # the same, as dataset samples (a folder finds its maps by them)
    gen_set: ImageSet  # generated defects (empty when none)
    size: tuple[int, int]
    cache: MapCache | None


class MapSource(Protocol):
    name: str

    def check(self, request: MapRequest) -> None:
        """Fail before any source does long work (a fit): everything cheap to validate."""

    def maps(self, request: MapRequest, log) -> tuple[DetectorMaps, DetectorMaps | None]:
        """Maps of the scored images and of the generated defects (None when there are none)."""


@dataclass(frozen=True)
class FittedDetector:
    name: str
    config: DetectorConfig

    def check(self, request: MapRequest) -> None:
        pass  # the config was checked when it was built

    def maps(self, request: MapRequest, log) -> tuple[DetectorMaps, DetectorMaps | None]:
        log(f"{self.name}: fitting / predicting {len(request.score_set) + len(request.gen_set)} images ...")
        det, entry, fit_seconds = self.fitted(request, log)  # once, for scored and generated images
        scored = predict_maps(det, request.score_set, request.size, entry, fit_seconds)
        gen = predict_maps(det, request.gen_set, request.size, entry, fit_seconds) if len(request.gen_set) else None
        log(f"{self.name}: fit {fit_seconds:.1f}s, {scored.cached_maps} maps from cache")
        return scored, gen

    def fill_shard(self, request: MapRequest, shard: Shard, log) -> int:
        """Put one shard's maps in the map cache (``request.cache``): the detector is fitted once per cache
        entry (the first shard to get there fits, the others wait and load that fit), then each shard
        predicts its own images that are not cached yet. Returns how many maps it computed."""
        det, entry, fit_seconds = self.fitted(request, log)
        computed = 0
        for images in (request.score_set, request.gen_set):
            part = shard.of(images)
            if len(part):
                computed += len(part) - predict_maps(det, part, request.size, entry, fit_seconds).cached_maps
        fitted = f"fit {fit_seconds:.1f}s" if fit_seconds else "fit loaded from the cache"
        log(f"{self.name}: shard {shard.index}/{shard.count}: {fitted}, {computed} maps computed")
        return computed

    def fitted(self, request: MapRequest, log) -> tuple[Detector, CacheEntry | None, float]:
        """The fitted detector (the cached fit, or fitted now), its cache entry, and the fit's seconds."""
        det = detector_class(self.name)(self.config)
        cache = request.cache
        entry = cache.entry(det, request.size, request.fit_set.ids) if cache is not None else None
        det, fit_seconds = fit_detector(det, request.fit_set, entry, log)
        return det, entry, fit_seconds


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (1-based, as ``--shard 2/4`` says it): every count-th image."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        i, sep, n = text.partition("/")
        try:
            shard = cls(int(i), int(n))
        except ValueError:
            shard = None
        if not sep or shard is None or not 1 <= shard.index <= shard.count:
            raise InputError(f"--shard takes I/N with 1 <= I <= N (e.g. 2/4), got {text!r}")
        return shard

    def of(self, images: ImageSet) -> ImageSet:
        return images.subset(range(self.index - 1, len(images), self.count))


@dataclass
class FolderMaps:
    folder: MapFolder
    _loaded: tuple[np.ndarray, np.ndarray, float] | None = None

    @property
    def name(self) -> str:
        return self.folder.name

    def check(self, request: MapRequest) -> None:
        """Reads every map now (cheap next to a fit), so a missing or bad one stops the run before any fit."""
        if len(request.gen_set):
            raise InputError(
                f"--maps {self.name}: maps computed elsewhere exist only for the dataset's images, not for segad's "
                "generated defects; drop --generated, or stack only detectors segad fits"
            )
        t0 = time.perf_counter()
        out = self.folder.load(request.scored, request.size)
        check_maps(self.name, out.maps, [str(s.image_path) for s in request.scored])
        ms = (time.perf_counter() - t0) * 1000 / max(len(request.scored), 1)
        self._loaded = as_stored(out.maps), np.asarray(out.scores, np.float32), ms

    def maps(self, request: MapRequest, log) -> tuple[DetectorMaps, DetectorMaps | None]:
        if self._loaded is None:
            self.check(request)
        maps, scores, ms = self._loaded
        where = f"{self.folder.root} ({self.folder.layout} layout"
        log(f"{self.name}: {len(maps)} maps read from {where}, {ms:.1f} ms each)")
        given = GivenMaps(self.name, request.size, self.folder.score_source, str(self.folder.root))
        return DetectorMaps(self.name, maps, scores, 0.0, ms, 0, given), None


__all__ = ["FittedDetector", "FolderMaps", "MapRequest", "MapSource", "Shard"]
