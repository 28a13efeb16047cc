from __future__ import annotations

import numpy as np
import pytest

from segad.metrics import MetricError, aupimo

reference = pytest.importorskip("experiments.reference_metrics")


def _set(seed: int, n_normal: int = 10, n_anomalous: int = 6, size: int = 128):
    rng = np.random.default_rng(seed)
    n = n_normal + n_anomalous
    masks = np.zeros((n, size, size), bool)
    maps = rng.normal(size=(n, size, size)).astype(np.float32)
    for i in range(n_normal, n):
        y, x = rng.integers(0, size - 16, 2)
        h, w = rng.integers(3, 16, 2)
        masks[i, y : y + h, x : x + w] = True
        maps[i, y : y + h, x : x + w] += rng.uniform(1.0, 5.0)
    return masks, maps


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_the_reference(seed: int) -> None:
    masks, maps = _set(seed)
    ours = aupimo(masks, maps, num_thresholds=30_000)
    ref_scores, ref_points = reference.reference_aupimo(masks, maps, num_thresholds=30_000)
    assert ours.num_points == ref_points
    assert np.array_equal(np.isnan(ours.scores), np.isnan(ref_scores))
    assert np.allclose(ours.scores, ref_scores, equal_nan=True, atol=1e-9)


def test_perfect_and_hopeless_maps() -> None:
    masks, maps = _set(0)
    perfect, hopeless = maps.copy(), maps.copy()
    perfect[masks] = 100.0  # above every normal score: TPR 1 at every threshold
    hopeless[masks] = -100.0
    result = aupimo(masks, perfect, num_thresholds=30_000)
    # TPR is 1 everywhere; the area is the share of ln(1e-4 / 1e-5) that the nearest achieved FPRs span
    # (no interpolation at the bounds, as the reference): 1 only when both bounds are hit exactly.
    lo, hi = result.fpr_achieved
    assert result.mean == pytest.approx(np.log(hi / lo) / np.log(10)) and result.mean > 0.9
    assert np.isnan(result.scores[:10]).all() and result.std == pytest.approx(0.0, abs=1e-12)
    assert np.allclose(
        result.scores, reference.reference_aupimo(masks, perfect, num_thresholds=30_000)[0], equal_nan=True
    )
    assert np.nanmax(aupimo(masks, hopeless, num_thresholds=30_000).scores) == 0.0


def test_too_few_normal_pixels_is_an_error() -> None:
    masks, maps = _set(0, n_normal=2, size=32)  # 2,048 normal pixels: FPR cannot go below ~5e-4
    with pytest.raises(MetricError, match="above the lower bound"):
        aupimo(masks, maps)


def test_too_few_thresholds_inside_the_bounds_is_an_error() -> None:
    masks, maps = _set(0)
    with pytest.raises(MetricError, match=r"only .* thresholds fall inside"):
        aupimo(masks, maps, num_thresholds=500)


def test_needs_both_kinds_of_image() -> None:
    masks, maps = _set(0)
    with pytest.raises(MetricError, match="normal and anomalous"):
        aupimo(masks[10:], maps[10:])
