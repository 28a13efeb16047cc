"""Pixel-level AUROC and AP over all pixels of all images, exact, without sorting every pixel together.

Negatives (almost every pixel) are sorted once on their own; each positive then finds its rank by
binary search. That gives the same ties-averaged AUROC and scikit-learn's step-sum AP as sorting the
pooled pixels, in a fraction of the time and memory.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from segad.metrics._validate import MetricError, masks_and_maps


def _split(masks: Any, maps: Any, metric: str) -> tuple[np.ndarray, np.ndarray]:
    m, a = masks_and_maps(masks, maps, metric)
    pos, neg = a[m], a[~m]
    if pos.size == 0 or neg.size == 0:
        raise MetricError(f"{metric} needs defect and good pixels; got {pos.size} defect of {m.size}")
    return np.sort(pos), np.sort(neg)


def _auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    below = np.searchsorted(neg, pos, side="left").astype(np.float64)
    ties = np.searchsorted(neg, pos, side="right") - below
    return float((below.sum() + 0.5 * ties.sum()) / (pos.size * neg.size))


def _ap(pos: np.ndarray, neg: np.ndarray) -> float:
    # Thresholds where recall moves are the distinct positive scores, from the highest down.
    last = np.r_[pos[1:] != pos[:-1], True]
    values = pos[last][::-1]
    tp = (pos.size - np.searchsorted(pos, values, side="left")).astype(np.float64)
    fp = (neg.size - np.searchsorted(neg, values, side="left")).astype(np.float64)
    recall_steps = np.diff(np.r_[0.0, tp]) / pos.size
    return float(np.sum(recall_steps * tp / (tp + fp)))


def pixel_auroc(masks: Any, maps: Any) -> float:
    return _auroc(*_split(masks, maps, "pixel_auroc"))


def pixel_ap(masks: Any, maps: Any) -> float:
    return _ap(*_split(masks, maps, "pixel_ap"))


def pixel_auroc_ap(masks: Any, maps: Any) -> tuple[float, float]:
    """Both from one sort, for when a report wants both."""
    pos, neg = _split(masks, maps, "pixel_auroc_ap")
    return _auroc(pos, neg), _ap(pos, neg)
