"""How an anomaly map is coloured for a person: one fixed scale per detector, set on held-out good images.

A map coloured by its own minimum and maximum makes a clean image look as hot as a defect. Here every
image of a detector shares one scale: transparent at the median pixel of the held-out good images, full
red at the largest good pixel, and the detector's threshold marked — the map maximum that the share
``target_fpr`` of held-out good images exceed, so a pixel above it alone would flag its image at the
run's false-alarm target. The scales are saved with the pipeline, so ``segad.predict`` colours new
images exactly as the training report did.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from detectors.errors import InputError


@dataclass(frozen=True)
class MapScale:
    low: float  # median pixel of the held-out good maps: shown transparent
    threshold: float  # map maximum exceeded by target_fpr of the held-out good images
    high: float  # largest pixel of the held-out good maps: shown full red

    def heat(self, anomaly_map: np.ndarray) -> np.ndarray:
        """Map values in [0, 1] on this scale (clipped: a defect hotter than any good pixel saturates)."""
        span = self.high - self.low
        if span <= 0:
            return (anomaly_map > self.high).astype(np.float32)
        return np.clip((anomaly_map.astype(np.float32) - self.low) / span, 0.0, 1.0)

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def map_scale(good_maps: np.ndarray, target_fpr: float) -> MapScale:
    """The scale of one detector from its (N, H, W) maps of held-out good images."""
    good = np.asarray(good_maps, dtype=np.float32)
    if good.ndim != 3 or len(good) == 0:
        raise InputError(f"a map scale needs a non-empty (N, H, W) stack of good maps, got shape {good.shape}")
    if not 0.0 < target_fpr < 1.0:
        raise InputError(f"target_fpr must be in (0, 1), got {target_fpr}")
    maxima = good.reshape(len(good), -1).max(1)
    return MapScale(
        low=float(np.median(good)),
        threshold=float(np.quantile(maxima, 1.0 - target_fpr)),
        high=float(maxima.max()),
    )


def map_scales(good_maps: Mapping[str, np.ndarray], target_fpr: float) -> dict[str, MapScale]:
    return {name: map_scale(maps, target_fpr) for name, maps in good_maps.items()}


def overlay(image: np.ndarray, anomaly_map: np.ndarray, scale: MapScale) -> np.ndarray:
    """The (H, W, 3) RGB image in [0, 1] under the map's heat: colour fades in with the heat, so a map
    within the good images' usual range leaves the image as it is."""
    heat = scale.heat(anomaly_map)
    colour = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1] / 255.0
    alpha = 0.6 * heat[..., None]
    return ((1 - alpha) * image + alpha * colour).clip(0, 1)


def outline(image: np.ndarray, region: np.ndarray, colour: tuple[float, float, float] = (0.0, 1.0, 0.0)) -> np.ndarray:
    """The image with the border of a boolean (H, W) region drawn 2 px wide (the segment that drove a score)."""
    out = np.ascontiguousarray(image, dtype=np.float32).copy()
    contours, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, colour, 2)
    return out


__all__ = ["MapScale", "map_scale", "map_scales", "outline", "overlay"]
