from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from segad.metrics import MetricError, pixel_ap, pixel_auroc, pixel_auroc_ap


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_equal_scikit_learn_with_ties(dtype) -> None:
    rng = np.random.default_rng(1)
    masks = rng.random((6, 20, 24)) > 0.85
    maps = (np.round(rng.random((6, 20, 24)) * 20) / 4 + masks * 0.5).astype(dtype)
    y, s = masks.ravel(), maps.astype(np.float64).ravel()
    assert pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert pixel_ap(masks, maps) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert pixel_auroc_ap(torch.tensor(masks), torch.tensor(maps.astype(np.float32))) == pytest.approx(
        (roc_auc_score(y, s), average_precision_score(y, s)), abs=1e-12
    )


def test_perfect_and_constant_maps() -> None:
    masks = np.zeros((2, 8, 8), bool)
    masks[1, 2:4, 2:4] = True
    assert pixel_auroc(masks, masks.astype(float)) == 1.0
    assert pixel_ap(masks, masks.astype(float)) == 1.0
    assert pixel_auroc(masks, np.ones((2, 8, 8))) == 0.5
    assert pixel_ap(masks, np.ones((2, 8, 8))) == pytest.approx(4 / 128)  # one threshold: precision = prevalence


def test_maps_are_resized_to_the_masks() -> None:
    masks = np.zeros((1, 16, 16), bool)
    masks[0, :, 8:] = True
    coarse = np.zeros((1, 4, 4), np.float32)
    coarse[0, :, 2:] = 1.0
    assert pixel_auroc(masks, coarse) == 1.0


def test_errors() -> None:
    with pytest.raises(MetricError, match="defect and good pixels"):
        pixel_auroc(np.zeros((2, 4, 4), bool), np.zeros((2, 4, 4)))
    with pytest.raises(MetricError, match="same N"):
        pixel_auroc(np.zeros((2, 4, 4), bool), np.zeros((3, 4, 4)))
    with pytest.raises(MetricError, match="boolean or 0/1"):
        pixel_auroc(np.full((1, 4, 4), 3), np.zeros((1, 4, 4)))
    bad = np.zeros((1, 4, 4))
    bad[0, 0, 0] = np.nan
    with pytest.raises(MetricError, match="NaN"):
        pixel_auroc(np.eye(4, dtype=bool)[None], bad)
