"""Image-level metrics: one score per image, label 1 = defect."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from segad.metrics._validate import MetricError, labels_and_scores


def image_auroc(labels: Any, scores: Any) -> float:
    y, s = labels_and_scores(labels, scores, "image_auroc")
    return float(roc_auc_score(y, s))


def image_ap(labels: Any, scores: Any) -> float:
    """scikit-learn's step-sum average precision (no interpolation)."""
    y, s = labels_and_scores(labels, scores, "image_ap")
    return float(average_precision_score(y, s))


def fpr_at_tpr(labels: Any, scores: Any, tpr: float = 0.95) -> float:
    """SegAD's FPR@95TPR: threshold = the (1 - tpr) linear quantile of defect scores; ties count as positives."""
    if not 0.0 < tpr <= 1.0:
        raise MetricError(f"fpr_at_tpr: tpr must be in (0, 1], got {tpr}")
    y, s = labels_and_scores(labels, scores, "fpr_at_tpr")
    threshold = np.quantile(s[y], 1.0 - tpr)
    return float(np.mean(s[~y] >= threshold))
