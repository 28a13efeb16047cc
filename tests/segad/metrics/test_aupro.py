from __future__ import annotations

import numpy as np
import pytest

from segad.metrics import MetricError, aupro, pro_curve

reference = pytest.importorskip("experiments.reference_metrics")


def _planted(n: int = 8, size: int = 48, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), bool)
    maps = rng.random((n, size, size)).astype(np.float32)
    for i in range(n // 2, n):
        for _ in range(rng.integers(1, 4)):
            y, x = rng.integers(0, size - 10, 2)
            h, w = rng.integers(2, 10, 2)
            masks[i, y : y + h, x : x + w] = True
            maps[i, y : y + h, x : x + w] += rng.uniform(0.0, 1.0)
    return masks, maps


@pytest.mark.parametrize("limit", [0.3, 0.05])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_the_official_script(limit: float, seed: int) -> None:
    masks, maps = _planted(seed=seed)
    assert aupro(masks, maps, limit) == pytest.approx(reference.reference_aupro(masks, maps, limit), abs=1e-6)


def test_ties_are_grouped_like_the_official_script() -> None:
    masks, maps = _planted(seed=3)
    coarse = np.round(maps * 4) / 4  # five distinct scores only
    assert aupro(masks, coarse) == pytest.approx(reference.reference_aupro(masks, coarse), abs=1e-6)


def test_perfect_and_constant_maps() -> None:
    masks, _ = _planted()
    assert aupro(masks, masks.astype(np.float32)) == pytest.approx(1.0)
    # One threshold: the curve jumps from (0, 0) to (1, 1); up to FPR 0.3 its area is 0.3^2 / 2.
    assert aupro(masks, np.ones(masks.shape, np.float32)) == pytest.approx(0.15)
    assert aupro(masks, np.ones(masks.shape, np.float32), fpr_limit=0.05) == pytest.approx(0.025)


def test_regions_are_8_connected() -> None:
    masks = np.zeros((2, 8, 8), bool)
    masks[1, 0, 0] = masks[1, 1, 1] = True  # touching diagonally: one region
    masks[1, 5, 5] = True  # a second region
    maps = np.zeros((2, 8, 8), np.float32)
    maps[1, 0, 0] = maps[1, 5, 5] = 1.0
    fpr, pro = pro_curve(masks, maps)
    # At threshold 1: region {(0,0),(1,1)} has TPR 1/2, region {(5,5)} TPR 1: PRO 3/4 (4-connectivity: 2/3).
    assert fpr[1] == 0.0 and pro[1] == pytest.approx(0.75)


def test_no_region_is_an_error_not_a_number() -> None:
    with pytest.raises(MetricError, match="undefined"):
        aupro(np.zeros((3, 8, 8), bool), np.random.default_rng(0).random((3, 8, 8)))
