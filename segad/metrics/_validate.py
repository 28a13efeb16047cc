"""Input checks shared by every metric: a clear error, never a made-up number."""

from __future__ import annotations

from typing import Any

import numpy as np


class MetricError(ValueError):
    """The inputs cannot give a meaningful value for this metric."""


def to_numpy(x: Any) -> np.ndarray:
    """numpy arrays, lists, and torch tensors (on any device) alike."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def labels_and_scores(labels: Any, scores: Any, metric: str) -> tuple[np.ndarray, np.ndarray]:
    y = to_numpy(labels)
    s = to_numpy(scores)
    if y.ndim != 1 or s.ndim != 1 or y.shape != s.shape:
        raise MetricError(f"{metric}: labels and scores must be 1-D of one length, got {y.shape} and {s.shape}")
    if not np.isin(y, (0, 1)).all():
        raise MetricError(f"{metric}: labels must be 0 (good) or 1 (defect)")
    if not np.issubdtype(s.dtype, np.number) or not np.isfinite(s).all():
        raise MetricError(f"{metric}: scores must be finite numbers (found NaN or inf)")
    y = y.astype(bool)
    if y.all() or not y.any():
        raise MetricError(f"{metric} needs both good and defect images; got {int(y.sum())} defects of {y.size}")
    return y, s.astype(np.float64)


def masks_and_maps(masks: Any, maps: Any, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W) bool masks and float maps at the masks' size (maps resized bilinearly if needed).

    float64 maps stay float64: casting down would merge or split ties and change the metric.
    """
    m = to_numpy(masks)
    a = to_numpy(maps)
    if m.ndim != 3 or a.ndim != 3 or m.shape[0] != a.shape[0]:
        raise MetricError(f"{metric}: masks and maps must be (N, H, W) with the same N, got {m.shape} and {a.shape}")
    if m.dtype != bool:
        if not np.isin(m, (0, 1)).all():
            raise MetricError(f"{metric}: masks must be boolean or 0/1")
        m = m.astype(bool)
    if not np.issubdtype(a.dtype, np.number):
        raise MetricError(f"{metric}: maps must be numeric, got {a.dtype}")
    a = a.astype(np.float64 if a.dtype == np.float64 else np.float32, copy=False)
    if a.shape[1:] != m.shape[1:]:
        import cv2

        h, w = m.shape[1:]
        a = np.stack([cv2.resize(x, (w, h), interpolation=cv2.INTER_LINEAR) for x in a])
    if not np.isfinite(a).all():
        raise MetricError(f"{metric}: maps contain NaN or inf")
    return m, a
