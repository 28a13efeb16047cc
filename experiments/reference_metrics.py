"""Slow, direct versions of AUPRO and AUPIMO, written from the metrics' definitions.

They follow the reference implementations' algorithms (the official MVTec AD script sorts every
pixel of every map together; jpcbertoldo/aupimo sorts each image and sweeps every threshold), and
their documented conventions, so they serve as ground truth for ``segad.metrics`` in the tests and
as the speed baseline in ``experiments/bench_metrics.py``. Written for clarity, not speed.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import label


def reference_pro_curve(masks: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every distinct score a threshold: sort all pixels, accumulate FP and per-region TP shares."""
    fp_step = np.zeros(masks.shape, np.uint32)
    pro_step = np.zeros(masks.shape, np.float64)
    n_regions, n_negative = 0, 0
    for i, m in enumerate(masks):
        regions, n = label(m, structure=np.ones((3, 3), int))  # 8-connectivity
        n_regions += n
        negative = regions == 0
        n_negative += int(negative.sum())
        fp_step[i][negative] = 1
        for r in range(1, n + 1):
            inside = regions == r
            pro_step[i][inside] = 1.0 / inside.sum()
    order = np.argsort(maps.ravel())[::-1]
    scores = maps.ravel()[order]
    fpr = np.cumsum(fp_step.ravel()[order]).astype(np.float32) / n_negative  # the official script's float32
    pro = np.cumsum(pro_step.ravel()[order]) / n_regions
    last_of_tie = np.append(np.diff(scores) != 0, True)
    fpr, pro = np.clip(fpr[last_of_tie], None, 1.0), np.clip(pro[last_of_tie], None, 1.0)
    return np.r_[0.0, fpr, 1.0], np.r_[0.0, pro, 1.0]


def reference_aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3) -> float:
    x, y = reference_pro_curve(masks, maps)
    correction = 0.0
    if fpr_limit not in x:
        i = int(np.searchsorted(x, fpr_limit, side="right"))
        y_at = y[i - 1] + (y[i] - y[i - 1]) * (fpr_limit - x[i - 1]) / (x[i] - x[i - 1])
        correction = 0.5 * (y_at + y[i - 1]) * (fpr_limit - x[i - 1])
    keep = x <= fpr_limit
    x, y = x[keep], y[keep]
    return float((np.sum(0.5 * (y[1:] + y[:-1]) * np.diff(x)) + correction) / fpr_limit)


def reference_aupimo(
    masks: np.ndarray, maps: np.ndarray, num_thresholds: int = 300_000, fpr_bounds: tuple[float, float] = (1e-5, 1e-4)
) -> tuple[np.ndarray, int]:
    """Per-image AUPIMO (NaN for normal images) and the number of points integrated."""
    lower, upper = fpr_bounds
    anomalous = masks.reshape(len(masks), -1).any(axis=1)
    normal_maps = maps[~anomalous]
    thresholds = np.linspace(normal_maps.min().item(), normal_maps.max().item(), num_thresholds, dtype=maps.dtype)

    def share_at_or_above(values: np.ndarray) -> np.ndarray:
        ordered = np.sort(values)
        return (ordered.size - np.searchsorted(ordered, thresholds, side="left")) / ordered.size

    shared_fpr = np.mean([share_at_or_above(m.ravel()) for m in normal_maps], axis=0)
    if not shared_fpr.min() <= lower:
        raise ValueError(f"shared FPR reaches only {shared_fpr.min()}, above {lower}")
    i_upper = int(np.argmin(np.abs(shared_fpr - upper)))
    i_lower = int(np.argmin(np.abs(shared_fpr - lower)))
    log_fpr = np.log(shared_fpr[i_upper : i_lower + 1][::-1])
    finite = np.isfinite(log_fpr)
    if finite.sum() <= 30:
        raise RuntimeError(f"only {finite.sum()} points inside the FPR bounds")
    scores = np.full(len(masks), np.nan)
    for i in np.flatnonzero(anomalous):
        tpr = share_at_or_above(maps[i][masks[i]])[i_upper : i_lower + 1][::-1]
        area = np.trapezoid(tpr[finite], log_fpr[finite])
        scores[i] = np.clip(area / np.log(upper / lower), 0.0, 1.0)
    return scores, int(finite.sum())
