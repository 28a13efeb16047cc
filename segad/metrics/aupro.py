"""AUPRO as the official MVTec AD evaluation computes it, without sorting every pixel.

Regions are 8-connected components of the masks; FPR counts every ground-truth-negative pixel of all
images (good images included); PRO is the mean over regions of each region's TPR. The curve has a
point at every distinct score (ties grouped), and is integrated with the trapezoid rule up to the
FPR limit, interpolating linearly at the limit, then divided by the limit.

Only the part of the curve below the limit matters, so only negatives above the score where FPR
first exceeds the limit are sorted (``np.partition`` finds it in linear time), plus the positives;
a numba merge of the two sorted lists then walks the curve once.
"""

from __future__ import annotations

from typing import Any

import cv2
import numba
import numpy as np

from segad.metrics._validate import MetricError, masks_and_maps


def region_labels(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """Global region ids (1..R, 0 = background) of 8-connected components across all masks."""
    labels = np.zeros(masks.shape, np.int32)
    total = 0
    for i, m in enumerate(masks):
        if m.any():
            n, lab = cv2.connectedComponents(m.astype(np.uint8), connectivity=8, ltype=cv2.CV_32S)
            labels[i] = np.where(lab > 0, lab + total, 0)
            total += n - 1
    return labels, total


@numba.njit(cache=True)
def _curve(neg_desc: np.ndarray, pos_desc: np.ndarray, pos_w: np.ndarray, n_neg: int, limit: float):
    """(FPR, PRO) after each distinct score, from the highest down, until FPR passes ``limit``."""
    cap = neg_desc.size + pos_desc.size + 1
    fpr = np.empty(cap)
    pro = np.empty(cap)
    i = j = k = 0
    fp = 0
    pro_acc = 0.0
    while i < neg_desc.size or j < pos_desc.size:
        if j >= pos_desc.size or (i < neg_desc.size and neg_desc[i] >= pos_desc[j]):
            v = neg_desc[i]
        else:
            v = pos_desc[j]
        while i < neg_desc.size and neg_desc[i] == v:
            fp += 1
            i += 1
        while j < pos_desc.size and pos_desc[j] == v:
            pro_acc += pos_w[j]
            j += 1
        fpr[k] = fp / n_neg
        pro[k] = pro_acc
        k += 1
        if fpr[k - 1] > limit:
            break
    return fpr[:k], pro[:k]


def _trapezoid_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """The official script's trapezoid with a linear correction at x_max."""
    correction = 0.0
    if x_max not in x:
        ins = int(np.searchsorted(x, x_max, side="right"))
        if not 0 < ins < len(x):
            raise MetricError(f"aupro: the curve does not reach FPR {x_max}; the maps have too few distinct scores")
        y_interp = y[ins - 1] + (y[ins] - y[ins - 1]) * (x_max - x[ins - 1]) / (x[ins] - x[ins - 1])
        correction = 0.5 * (y_interp + y[ins - 1]) * (x_max - x[ins - 1])
    keep = x <= x_max
    x, y = x[keep], y[keep]
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * (x[1:] - x[:-1])) + correction)


def pro_curve(masks: Any, maps: Any, fpr_limit: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """The (FPR, PRO) curve from (0, 0) up to the first point past ``fpr_limit``."""
    m, a = masks_and_maps(masks, maps, "aupro")
    labels, n_regions = region_labels(m)
    if n_regions == 0:
        raise MetricError("aupro: the masks hold no defect region, so AUPRO is undefined (not 0, not 1)")
    neg = a[~m]
    if neg.size == 0:
        raise MetricError("aupro: every pixel is a defect; FPR is undefined")
    # First score at which FPR exceeds the limit: the k-th largest negative, k = floor(limit * N) + 1.
    k = min(int(np.floor(fpr_limit * neg.size)) + 1, neg.size)
    cut = np.partition(neg, neg.size - k)[neg.size - k]
    neg_desc = np.sort(neg[neg >= cut])[::-1]
    region = labels[m]
    sizes = np.bincount(region, minlength=n_regions + 1).astype(np.float64)
    pos = a[m]
    keep = pos >= cut
    order = np.argsort(pos[keep])[::-1]
    pos_desc = pos[keep][order]
    weights = (1.0 / (sizes[region[keep]] * n_regions))[order]
    fpr, pro = _curve(np.ascontiguousarray(neg_desc), np.ascontiguousarray(pos_desc), weights, neg.size, fpr_limit)
    return np.r_[0.0, np.minimum(fpr, 1.0)], np.r_[0.0, np.minimum(pro, 1.0)]


def aupro(masks: Any, maps: Any, fpr_limit: float = 0.3) -> float:
    """Normalised area under the PRO curve up to ``fpr_limit`` (0.3 by default; 0.05 is also common)."""
    if not 0.0 < fpr_limit <= 1.0:
        raise MetricError(f"aupro: fpr_limit must be in (0, 1], got {fpr_limit}")
    fpr, pro = pro_curve(masks, maps, fpr_limit)
    return _trapezoid_to(fpr, pro, fpr_limit) / fpr_limit
