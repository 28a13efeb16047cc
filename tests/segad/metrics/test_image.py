from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from segad.metrics import MetricError, fpr_at_tpr, image_ap, image_auroc


def test_auroc_and_ap_equal_scikit_learn_with_ties() -> None:
    rng = np.random.default_rng(0)
    y = rng.random(200) < 0.3
    s = rng.integers(0, 10, 200).astype(float) + y  # many ties
    assert image_auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert image_ap(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert image_auroc(torch.tensor(y), torch.tensor(s)) == pytest.approx(roc_auc_score(y, s))


def test_perfect_and_constant_scores() -> None:
    y = np.array([0, 0, 0, 1, 1])
    assert image_auroc(y, [0, 1, 2, 3, 4]) == 1.0
    assert image_auroc(y, [1, 1, 1, 1, 1]) == 0.5
    assert fpr_at_tpr(y, [0, 1, 2, 3, 4]) == 0.0
    assert fpr_at_tpr(y, [1, 1, 1, 1, 1]) == 1.0  # ties at the threshold count as false positives


def test_fpr_at_95_tpr_uses_the_linear_5_percent_quantile_of_defects() -> None:
    defects = np.arange(1.0, 21.0)  # quantile 0.05 (linear) = 1.95
    good = np.array([0.0, 1.0, 1.9, 2.0, 3.0])
    y = np.r_[np.zeros(5), np.ones(20)]
    assert fpr_at_tpr(y, np.r_[good, defects]) == pytest.approx(2 / 5)  # 2 and 3 are >= 1.95


@pytest.mark.parametrize(
    ("labels", "scores", "message"),
    [
        ([0, 0, 0], [1, 2, 3], "both good and defect"),
        ([0, 1], [0.1, np.nan], "finite"),
        ([0, 1, 1], [0.1, 0.2], "one length"),
        ([0, 2], [0.1, 0.2], "0 \\(good\\) or 1"),
    ],
)
def test_bad_input_is_an_error(labels, scores, message) -> None:
    with pytest.raises(MetricError, match=message):
        image_auroc(labels, scores)
