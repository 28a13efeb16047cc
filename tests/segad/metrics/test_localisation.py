from __future__ import annotations

import cv2
import numpy as np
import pytest

from segad.metrics import MetricError
from segad.metrics.localisation import defect_boxes, proportion_localised


def _square(size: int, y: int, x: int, side: int) -> np.ndarray:
    m = np.zeros((size, size), bool)
    m[y : y + side, x : x + side] = True
    return m


def test_perfect_and_constant_maps() -> None:
    masks = np.stack([_square(64, 10, 10, 24), _square(64, 30, 5, 20)])
    assert proportion_localised(masks, masks.astype(np.float32)) == 1.0
    assert proportion_localised(masks, np.ones(masks.shape, np.float32)) == 0.0  # nothing is above any threshold


def test_small_defects_get_boxes_of_an_eighth_of_the_image() -> None:
    mask = _square(64, 30, 30, 2)
    (box,) = defect_boxes(mask, min_side=8)
    assert min(box[1]) == 8
    # A map that lights up only the 2x2 defect covers 4 of the 8x8 box's pixels: IoU < 0.3, PL 0 ...
    assert proportion_localised(mask[None], mask[None].astype(np.float32)) == 0.0
    # ... while lighting up the box localises it.
    lit = np.zeros((64, 64), np.uint8)
    cv2.drawContours(lit, [np.intp(cv2.boxPoints(box))], 0, 1, -1)
    assert proportion_localised(mask[None], lit[None].astype(np.float32)) == 1.0


def test_nearby_boxes_merge_and_far_ones_do_not() -> None:
    near = _square(64, 20, 20, 2) | _square(64, 20, 24, 2)  # raised boxes overlap almost fully
    assert len(defect_boxes(near, min_side=8)) == 1
    far = _square(64, 5, 5, 2) | _square(64, 50, 50, 2)
    assert len(defect_boxes(far, min_side=8)) == 2


def test_equals_the_reference_package() -> None:
    ref = pytest.importorskip("proportion_localised.__main__")
    pytest.importorskip("shapely")
    rng = np.random.default_rng(0)
    for _ in range(4):
        masks = np.zeros((6, 256, 256), bool)
        maps = rng.random((6, 256, 256)).astype(np.float32)
        for i in range(6):
            for _ in range(rng.integers(1, 5)):
                y, x = rng.integers(10, 220, 2)
                h, w = rng.integers(3, 40, 2)
                masks[i, y : y + h, x : x + w] = True
                maps[i, y : y + h, x : x + w] += rng.uniform(0, 2)
        expected = ref.calculate(maps, masks, anomaly_likelihood_definitely_increasing=True, return_score_only=True)
        assert proportion_localised(masks, maps) == pytest.approx(expected, abs=1e-12)


def test_no_defect_is_an_error() -> None:
    with pytest.raises(MetricError, match="undefined"):
        proportion_localised(np.zeros((2, 16, 16), bool), np.zeros((2, 16, 16)))
