from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.stats import kurtosis, skew

from features import batch_statistics, segment_statistics


def reference(anomaly_map: np.ndarray, segments: np.ndarray, k: int) -> np.ndarray:
    """SegAD's own way: mask per segment, np.quantile and scipy's skew / kurtosis; zeros when empty."""
    out = np.zeros((k, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for j in range(k):
            v = anomaly_map[segments == j].astype(np.float64)
            if len(v):
                out[j] = [np.quantile(v, 0.995), skew(v), kurtosis(v), v.mean()]
    return out


@pytest.mark.parametrize("seed", range(6))
def test_equals_the_reference_way(seed: int) -> None:
    rng = np.random.default_rng(seed)
    size = int(rng.integers(8, 80))
    k = int(rng.integers(1, 7))
    anomaly_map = rng.gamma(2.0, 1.0, (size, size)).astype(np.float32)
    if seed % 2:
        anomaly_map = np.round(anomaly_map * 2) / 2  # heavy ties
    segments = rng.integers(0, k, (size, size)).astype(np.int32)
    ours, ref = segment_statistics(anomaly_map, segments, k), reference(anomaly_map, segments, k)
    assert np.array_equal(np.isnan(ours), np.isnan(ref))
    assert np.allclose(ours, ref, rtol=1e-9, atol=1e-9, equal_nan=True)


def test_empty_segment_gives_zeros_and_constant_segment_gives_nan_like_scipy() -> None:
    m = np.arange(16, dtype=np.float32).reshape(4, 4)
    seg = np.zeros((4, 4), np.int32)
    seg[0] = 1
    m[0] = 7.0  # segment 1 is constant
    out = segment_statistics(m, seg, 3)
    assert np.isnan(out[1, 1]) and np.isnan(out[1, 2]) and out[1, 0] == 7.0 and out[1, 3] == 7.0
    assert np.array_equal(out[2], np.zeros(4))  # no pixel has label 2
    assert np.allclose(out[0], reference(m, seg, 3)[0])


def test_batch_matches_single_maps() -> None:
    rng = np.random.default_rng(0)
    maps = rng.random((3, 2, 20, 24)).astype(np.float32)
    segs = rng.integers(0, 4, (3, 20, 24))
    batch = batch_statistics(maps, segs, 4)
    assert batch.shape == (3, 2, 4, 4)
    for i in range(3):
        for m in range(2):
            assert np.allclose(batch[i, m], segment_statistics(maps[i, m], segs[i], 4), equal_nan=True)


def test_bad_labels_and_shapes() -> None:
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.1"):
        segment_statistics(np.zeros((4, 4)), np.full((4, 4), 2), 2)
    with pytest.raises(ValueError, match="integer labels"):
        segment_statistics(np.zeros((4, 4)), np.zeros((4, 4)), 1)
    with pytest.raises(ValueError, match="one \\(H, W\\) shape"):
        segment_statistics(np.zeros((4, 4)), np.zeros((4, 5), int), 1)
