"""Segments: a label map per image that splits it into product components.

Three ways to get them: the whole image as one segment; label maps the user provides (one per
image, e.g. from a CAD overlay or a segmentation model); or unsupervised components, k-means on
backbone patch features of the good training images, so that a label means the same part in every
image. k-means runs on a downscaled image and a shallow level, so segmenting costs a fraction of a
base detector's time per image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Self

import numpy as np
import torch
import torch.nn.functional as F

from detectors.errors import InputError

SegmentMethod = Literal["whole", "kmeans", "folder"]


@dataclass(frozen=True)
class SegmentSpec:
    """Parsed ``--segments`` value: ``whole``, ``kmeans:K`` or ``folder[:PATH]``."""

    method: SegmentMethod
    k: int = 1
    path: str | None = None

    @classmethod
    def parse(cls, text: str) -> SegmentSpec:
        method, _, arg = text.partition(":")
        if method == "whole" and not arg:
            return cls("whole", 1)
        if method == "kmeans":
            try:
                k = int(arg or 4)
            except ValueError:
                raise InputError(f"--segments {text!r}: K must be an integer, e.g. kmeans:4") from None
            if not 1 <= k <= 64:
                raise InputError(f"--segments {text!r}: K must be between 1 and 64")
            return cls("kmeans", k)
        if method == "folder":
            return cls("folder", 0, arg or None)
        raise InputError(f"--segments {text!r}: use whole, kmeans:K or folder[:PATH]")

    def __str__(self) -> str:
        if self.method == "kmeans":
            return f"kmeans:{self.k}"
        return f"folder:{self.path}" if self.method == "folder" and self.path else self.method


class WholeImage:
    """One segment: SegAD's statistics then describe the whole map."""

    n_segments_ = 1

    def fit(self, images: np.ndarray | None = None) -> Self:
        return self

    def predict(self, images: np.ndarray, paths: Sequence[Path | None] | None = None) -> np.ndarray:
        return np.zeros((len(images), *images.shape[-2:]), np.int32)


class FolderSegments:
    """User-provided label maps, one per image, resized by nearest neighbour to the image size."""

    def __init__(self, n_segments: int | None = None) -> None:
        self.n_segments_ = n_segments

    def fit(self, paths: Sequence[Path | None]) -> Self:
        from segad.data.images import load_segments

        if self.n_segments_ is None:
            if any(p is None for p in paths):
                raise InputError("--segments folder: some training images have no segment map")
            # At the maps' own size: a thin component (a cable, a trace) can vanish when downscaled, and
            # with it the highest label, which predict() would then reject as out of range.
            self.n_segments_ = 1 + max(int(load_segments(p, None).max()) for p in paths)  # type: ignore[arg-type]
        return self

    def predict(self, images: np.ndarray, paths: Sequence[Path | None] | None = None) -> np.ndarray:
        from segad.data.images import load_segments

        if paths is None or any(p is None for p in paths) or len(paths) != len(images):
            raise InputError("--segments folder needs a segment map for every image")
        size = images.shape[-2:]
        out = np.stack([load_segments(p, size) for p in paths])  # type: ignore[arg-type]
        if out.max() >= self.n_segments_ or out.min() < 0:
            bad = next(p for p, m in zip(paths, out, strict=True) if m.max() >= self.n_segments_ or m.min() < 0)
            raise InputError(f"{bad}: labels must lie in 0..{self.n_segments_ - 1} (as in the training maps)")
        return out


@dataclass(frozen=True)
class KMeansConfig:
    k: int = 4
    backbone: str = "efficientnet_lite0"
    layer: str = "layer2"
    input_size: int = 128  # the image is downscaled to this first: components are large, detail is not needed
    max_samples: int = 50_000
    seed: int = 0
    device: str = "auto"


class KMeansSegments:
    """k-means over backbone patch features of good images; clusters ordered by size (0 = largest)."""

    def __init__(self, config: KMeansConfig | None = None) -> None:
        self.config = config or KMeansConfig()
        self._backbone = None

    @property
    def n_segments_(self) -> int:
        return self.config.k

    def _features(self, images: np.ndarray) -> torch.Tensor:
        """(N, h, w, C) L2-normalised patch features."""
        from detectors.backbones import load_backbone

        if self._backbone is None:
            self._backbone = load_backbone(self.config.backbone, self.config.device)
        device = next(self._backbone.parameters()).device
        out = []
        for s in range(0, len(images), 32):
            x = torch.as_tensor(images[s : s + 32], device=device).float()
            size = self.config.input_size
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            with torch.inference_mode():
                f = self._backbone(x, (self.config.layer,))[self.config.layer]
            out.append(F.normalize(f, dim=1).permute(0, 2, 3, 1).cpu())
        return torch.cat(out)

    def fit(self, images: np.ndarray) -> Self:
        from sklearn.cluster import KMeans

        feats = self._features(images).reshape(-1, self._backbone.channels[self.config.layer]).numpy()
        rng = np.random.default_rng(self.config.seed)
        if len(feats) > self.config.max_samples:
            feats = feats[rng.choice(len(feats), self.config.max_samples, replace=False)]
        if len(feats) < self.config.k:
            raise InputError(f"kmeans:{self.config.k} needs at least {self.config.k} patches; got {len(feats)}")
        km = KMeans(self.config.k, n_init=4, random_state=self.config.seed).fit(feats)
        order = np.argsort(-np.bincount(km.labels_, minlength=self.config.k), kind="stable")
        self.centroids_ = torch.from_numpy(km.cluster_centers_[order].astype(np.float32))
        return self

    def predict(self, images: np.ndarray, paths: Sequence[Path | None] | None = None) -> np.ndarray:
        feats = self._features(images)
        n, h, w, c = feats.shape
        labels = torch.cdist(feats.reshape(-1, c), self.centroids_).argmin(1).reshape(n, 1, h, w).float()
        full = F.interpolate(labels, size=tuple(images.shape[-2:]), mode="nearest")
        return full[:, 0].numpy().astype(np.int32)


Segmenter = WholeImage | FolderSegments | KMeansSegments


def make_segmenter(spec: SegmentSpec, backbone: str = "efficientnet_lite0", device: str = "auto", seed: int = 0):
    if spec.method == "whole":
        return WholeImage()
    if spec.method == "kmeans":
        return KMeansSegments(KMeansConfig(k=spec.k, backbone=backbone, device=device, seed=seed))
    return FolderSegments()
