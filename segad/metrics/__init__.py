"""Evaluation metrics as the reference implementations compute them; truth first, like scikit-learn."""

from segad.metrics._validate import MetricError
from segad.metrics.aupimo import AupimoResult, aupimo
from segad.metrics.aupro import aupro, pro_curve
from segad.metrics.image import fpr_at_tpr, image_ap, image_auroc
from segad.metrics.localisation import proportion_localised
from segad.metrics.pixel import pixel_ap, pixel_auroc, pixel_auroc_ap

__all__ = [
    "AupimoResult",
    "MetricError",
    "aupimo",
    "aupro",
    "fpr_at_tpr",
    "image_ap",
    "image_auroc",
    "pixel_ap",
    "pixel_auroc",
    "pixel_auroc_ap",
    "pro_curve",
    "proportion_localised",
]
