"""AUPIMO (Bertoldo et al., 2024): per-image area under the PIMO curve, on a log FPR axis.

Reference: jpcbertoldo/aupimo (also anomalib's ``metrics/pimo``). Thresholds are a uniform grid from
the lowest to the highest score of the *normal* images; the shared FPR at each threshold is the mean
over normal images of their own FPR; each anomalous image gets its TPR curve. The integration bounds
are the thresholds whose shared FPR is nearest to 1e-5 and 1e-4 (no interpolation); the area under
TPR over ln(shared FPR) between them is divided by ln(1e-4 / 1e-5) and clipped to [0, 1].

The reference sorts every image's pixels and sweeps the thresholds. Because the thresholds are a
uniform grid, a pixel's bin is arithmetic, so counting is one pass over the pixels (numba) and the
anomalous images only need histograms over the few thresholds inside the bounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numba
import numpy as np

from segad.metrics._validate import MetricError, masks_and_maps


@dataclass(frozen=True)
class AupimoResult:
    scores: np.ndarray  # (N,) per image; NaN for normal images
    num_points: int  # thresholds inside the integration bounds
    thresholds: tuple[float, float]  # the thresholds at the FPR bounds (upper FPR, lower FPR)
    fpr_bounds: tuple[float, float]
    fpr_achieved: tuple[float, float]  # the shared FPRs nearest the bounds, where integration starts and ends

    @property
    def mean(self) -> float:
        return float(np.nanmean(self.scores))

    @property
    def std(self) -> float:
        return float(np.nanstd(self.scores))


@numba.njit(cache=True, inline="always")
def _bin(s: float, thr: np.ndarray, lo: float, step: float) -> int:
    """Index of the last threshold <= s (-1 if none), exact against the grid's actual values."""
    n = thr.size
    if s < thr[0]:
        return -1
    if s >= thr[n - 1]:
        return n - 1
    k = int((s - lo) / step) if step > 0 else 0
    k = min(max(k, 0), n - 1)
    while k + 1 < n and thr[k + 1] <= s:
        k += 1
    while k > 0 and thr[k] > s:
        k -= 1
    return k


@numba.njit(cache=True)
def _normal_ge_counts(values: np.ndarray, thr: np.ndarray) -> np.ndarray:
    """For each threshold, how many of ``values`` are >= it: a histogram, then a reversed cumsum."""
    n_thr = thr.size
    lo = thr[0]
    step = (thr[n_thr - 1] - thr[0]) / (n_thr - 1) if n_thr > 1 else 0.0
    hist = np.zeros(n_thr, np.int64)
    for p in range(values.size):
        k = _bin(values[p], thr, lo, step)
        if k >= 0:
            hist[k] += 1
    ge = np.empty(n_thr, np.int64)
    acc = 0
    for k in range(n_thr - 1, -1, -1):
        acc += hist[k]
        ge[k] = acc
    return ge


@numba.njit(cache=True)
def _image_auc(values: np.ndarray, thr: np.ndarray, i0: int, i1: int, log_fpr: np.ndarray, valid: np.ndarray):
    """Trapezoid of TPR over ln(shared FPR) for thresholds i0..i1, ascending FPR (descending index)."""
    n_thr = thr.size
    lo = thr[0]
    step = (thr[n_thr - 1] - thr[0]) / (n_thr - 1) if n_thr > 1 else 0.0
    width = i1 - i0 + 1
    hist = np.zeros(width, np.int64)  # slot r: pixels whose last threshold <= them is i0 + r (last: >= i1)
    for p in range(values.size):
        k = _bin(values[p], thr, lo, step)
        if k >= i1:
            hist[width - 1] += 1
        elif k >= i0:
            hist[k - i0] += 1
    tpr = np.empty(width)
    acc = 0
    for j in range(width - 1, -1, -1):
        acc += hist[j]
        tpr[j] = acc / values.size
    # Walk from the highest threshold (lowest FPR) down, as the reference integrates after its flip.
    area = 0.0
    prev_x = 0.0
    prev_y = 0.0
    started = False
    for j in range(width - 1, -1, -1):
        if not valid[j]:
            continue
        x = log_fpr[j]
        y = tpr[j]
        if started:
            area += 0.5 * (y + prev_y) * (x - prev_x)
        prev_x, prev_y, started = x, y, True
    return area


def aupimo(
    masks: Any, maps: Any, fpr_bounds: tuple[float, float] = (1e-5, 1e-4), num_thresholds: int = 300_000
) -> AupimoResult:
    lower, upper = fpr_bounds
    if not 0.0 < lower < upper <= 1.0:
        raise MetricError(f"aupimo: fpr_bounds must satisfy 0 < lower < upper <= 1, got {fpr_bounds}")
    if num_thresholds < 2:
        raise MetricError(f"aupimo: num_thresholds must be >= 2, got {num_thresholds}")
    m, a = masks_and_maps(masks, maps, "aupimo")
    anomalous = m.reshape(len(m), -1).any(axis=1)
    if anomalous.all() or not anomalous.any():
        raise MetricError(f"aupimo needs normal and anomalous images; got {int(anomalous.sum())} anomalous of {len(m)}")
    normal = a[~anomalous].ravel()
    if normal.min() == normal.max():
        raise MetricError("aupimo: the normal images' maps are constant; there is no threshold range")
    # The reference builds the grid in the maps' own dtype (float32 maps: float32 thresholds).
    thr = np.linspace(normal.min().item(), normal.max().item(), num_thresholds, dtype=a.dtype)
    if not np.all(np.diff(thr) > 0):
        raise MetricError(
            f"aupimo: {num_thresholds} thresholds are not strictly increasing in {a.dtype} over the normal maps' "
            "narrow range; use fewer thresholds or float64 maps"
        )
    shared_fpr = _normal_ge_counts(normal, thr) / normal.size  # every image has H*W pixels: mean = pooled
    if lower < shared_fpr[-1]:
        raise MetricError(
            f"aupimo: the normal images' {normal.size} pixels reach a shared FPR of {shared_fpr[-1]:.3g} at best, "
            f"above the lower bound {lower:g}; add normal images (at least {int(np.ceil(1 / lower))} pixels) "
            "or raise the lower FPR bound"
        )
    i_upper = int(np.argmin(np.abs(shared_fpr - upper)))  # FPR 1e-4: the lower threshold index
    i_lower = int(np.argmin(np.abs(shared_fpr - lower)))
    if i_upper >= i_lower:
        raise MetricError(f"aupimo: the FPR bounds {fpr_bounds} fall on one threshold; raise num_thresholds")
    with np.errstate(divide="ignore"):
        log_fpr = np.log(shared_fpr[i_upper : i_lower + 1])
    valid = np.isfinite(log_fpr)
    num_points = int(valid.sum())
    if num_points <= 30:
        raise MetricError(
            f"aupimo: only {num_points} thresholds fall inside the FPR bounds {fpr_bounds}; "
            "raise num_thresholds (the reference needs more than 30)"
        )
    norm = float(np.log(upper / lower))
    scores = np.full(len(m), np.nan)
    for i in np.flatnonzero(anomalous):
        area = _image_auc(a[i][m[i]], thr, i_upper, i_lower, log_fpr, valid)
        scores[i] = min(max(area / norm, 0.0), 1.0)
    return AupimoResult(
        scores,
        num_points,
        (float(thr[i_upper]), float(thr[i_lower])),
        (lower, upper),
        (float(shared_fpr[i_lower]), float(shared_fpr[i_upper])),
    )
