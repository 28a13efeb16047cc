"""Anomaly-map cache: each map is computed once per (detector config, image size, fit set, image).

A key hashes the detector's name and version, its identity (every option that can change a fit,
and the device type: ``DetectorConfig.identity``), the image size and the content hashes of the
fit images in the order the detector sees them (training batches and the coreset's start depend on
it), so a changed config, device or fit set can never return stale maps. Inside a
key's folder sit the fitted detector and one small file per image (float16 map, float32 score),
each written to a temporary name and renamed, so an interrupted run keeps every finished map and
never leaves a torn file behind. A file damaged anyway (a full disk, a copy cut short, a stray edit) is
named in a warning, removed and recomputed: it must never fail every later run, nor feed a wrong map.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from detectors.atomic import atomic_write
from detectors.base import Detector
from detectors.registry import load_detector


def content_id(data: bytes | np.ndarray) -> str:
    """A stable id for an image's content (file bytes or a pixel array)."""
    h = hashlib.sha1()
    if isinstance(data, np.ndarray):
        h.update(f"{data.dtype}{data.shape}".encode())
        data = np.ascontiguousarray(data).tobytes()
    h.update(data)
    return h.hexdigest()


def file_id(path: str | Path) -> str:
    return content_id(Path(path).read_bytes())


class CacheEntry:
    """One fitted detector's folder: the detector file plus a map per image id."""

    def __init__(self, path: Path) -> None:
        self.path = path
        (path / "maps").mkdir(parents=True, exist_ok=True)

    @property
    def detector_path(self) -> Path:
        return self.path / "detector.safetensors"

    def load_detector(self) -> Detector | None:
        if not self.detector_path.is_file():
            return None
        try:
            return load_detector(self.detector_path)
        except Exception as e:  # safetensors, JSON and our own errors: any unreadable file is refitted
            self._discard(self.detector_path, e, "the detector is fitted again")
            return None

    def save_detector(self, det: Detector) -> None:
        det.save(self.detector_path)  # Detector.save is atomic itself

    @property
    def lock_path(self) -> Path:
        return self.path / "fit.lock"

    @contextmanager
    def fit_lock(self, log: Callable[[str], None] = print) -> Iterator[None]:
        """Held while one process fits this entry's detector. Processes sharing the cache (the shards of
        one map computation, on one machine or several) wait for it and then load that fit, so every map
        of an entry comes from one fitted detector. A POSIX record lock on a file that stays: the system
        releases it when its process ends, however it ends, so a killed fit never blocks the next one
        (on a network folder the file system must support locks, as NFSv4 does). Per process: threads of
        one process do not exclude each other."""
        fd = os.open(self.lock_path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # another process is fitting
                log(f"waiting for another process to fit {self.path.name} (it holds {self.lock_path})")
                fcntl.lockf(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _map_path(self, image_id: str) -> Path:
        return self.path / "maps" / f"{image_id}.npz"

    def get(self, image_id: str) -> tuple[np.ndarray, float] | None:
        p = self._map_path(image_id)
        if not p.is_file():
            return None
        try:
            with np.load(p) as f:
                anomaly_map, score = f["map"], float(f["score"])
            if anomaly_map.ndim != 2:
                raise ValueError(f"a map of shape {anomaly_map.shape}, not (H, W)")
        except Exception as e:  # truncated zip, EOF, missing key, wrong shape: recompute this map
            self._discard(p, e, "its map is computed again")
            return None
        return anomaly_map, score

    @staticmethod
    def _discard(path: Path, error: Exception, then: str) -> None:
        warnings.warn(
            f"map cache: {path} is damaged ({type(error).__name__}: {error}); removed, {then}",
            RuntimeWarning,
            stacklevel=3,
        )
        path.unlink(missing_ok=True)

    def put(self, image_id: str, anomaly_map: np.ndarray, score: float) -> None:
        def write(tmp: Path) -> None:
            with tmp.open("wb") as f:
                np.savez(f, map=anomaly_map.astype(np.float16), score=np.float32(score))

        atomic_write(self._map_path(image_id), write)


class MapCache:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @staticmethod
    def key(det: Detector, image_size: tuple[int, int], fit_ids: Iterable[str], device_type: str | None = None) -> str:
        """The entry's key; ``device_type`` ("cpu" or "cuda") overrides resolving the detector's device."""
        payload = {
            "detector": det.name,
            "version": det.version,
            "config": det.config.identity(device_type),
            "image_size": list(image_size),
            "fit": list(fit_ids),  # ordered: the same images in another order can give another fit
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]

    def entry(self, det: Detector, image_size: tuple[int, int], fit_ids: Iterable[str]) -> CacheEntry:
        key = self.key(det, image_size, fit_ids)
        entry = CacheEntry(self.root / f"{det.name}-{key}")
        meta = entry.path / "key.json"
        if not meta.is_file():  # for people browsing the cache: what this folder holds
            info = {"detector": det.name, "config": det.config.identity(), "image_size": list(image_size)}
            atomic_write(meta, lambda tmp: tmp.write_text(json.dumps(info, indent=2)))
        return entry

    def clear(self) -> None:
        """Remove every cached detector and map under the root."""
        if self.root.is_dir():
            shutil.rmtree(self.root)
