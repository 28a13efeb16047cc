"""Per-image feature vectors: every detector's per-segment statistics, then every detector's score.

Layout (SegAD's, per detector): for segment j in 0..K-1 the four statistics q995, skewness,
kurtosis, mean; after all detectors' blocks, one image score per detector. Length K*4*M + M.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from detectors.errors import InputError
from features.statistics import STATISTICS, batch_statistics


def feature_names(detectors: Sequence[str], n_segments: int, with_scores: bool = True) -> list[str]:
    names = [f"{d}/seg{j}/{s}" for d in detectors for j in range(n_segments) for s in STATISTICS]
    return names + ([f"{d}/score" for d in detectors] if with_scores else [])


def feature_matrix(
    maps: Mapping[str, np.ndarray],
    scores: Mapping[str, np.ndarray],
    segments: np.ndarray,
    n_segments: int,
    chunk: int = 64,
    with_scores: bool = True,
) -> np.ndarray:
    """(N, K*4*M + M) features from (N, H, W) maps and (N,) scores per detector, (N, H, W) segments
    (K*4*M without the image scores)."""
    names = list(maps)
    n = len(segments)
    for d in names:
        if maps[d].shape != segments.shape:
            raise InputError(f"{d}: maps {maps[d].shape} do not match segment maps {segments.shape}")
    stats = np.empty((n, len(names), n_segments, len(STATISTICS)))
    for s in range(0, n, chunk):
        block = np.stack([maps[d][s : s + chunk] for d in names], axis=1).astype(np.float32)
        stats[s : s + chunk] = batch_statistics(block, segments[s : s + chunk], n_segments)
    if not with_scores:
        return stats.reshape(n, -1)
    image_scores = np.stack([np.asarray(scores[d], np.float64) for d in names], axis=1)
    return np.concatenate([stats.reshape(n, -1), image_scores], axis=1)


def join_features(blocks: Sequence[tuple[np.ndarray, int]], with_scores: bool = True) -> np.ndarray:
    """``feature_matrix`` blocks of disjoint detector lists, each ``(X, n_detectors)``, -> one matrix in the
    layout of all those detectors at once (every detector's statistics, then every score)."""
    stats, scores = [], []
    for X, m in blocks:
        cut = X.shape[1] - (m if with_scores else 0)
        stats.append(X[:, :cut])
        scores.append(X[:, cut:])
    return np.concatenate([*stats, *scores], axis=1)
