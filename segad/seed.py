"""One seed's SegAD model: the classifier on that seed's rows, its out-of-fold margins, the final score
chosen on them, and the threshold calibrated on that score. ``segad.train`` runs it per seed; the
ablation scripts run the same step, so what they compare is what ships.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from segad.calibration import Calibration, calibrate, out_of_fold_scores
from segad.classifier import SegadClassifier
from segad.selection import Selection, ensemble_score, select


@dataclass(frozen=True)
class SeedModel:
    classifier: SegadClassifier
    selection: Selection  # the final score (a blend of margins and detector scores) and why
    oof: np.ndarray  # each training row's margin from a classifier fit without its fold
    prior: np.ndarray | None  # the ensemble score the forest started from, on the training rows (or None)
    calibration: Calibration  # the threshold, conformal on the good rows' out-of-fold final scores

    def margins(self, X: np.ndarray, ensemble: np.ndarray | None) -> np.ndarray:
        """The classifier's margins of new rows; ``ensemble``: their ensemble score, when it started from it."""
        return self.classifier.decision_function(X, ensemble if self.prior is not None else None)


def fit_seed_model(
    make_classifier: Callable[..., SegadClassifier],
    X_train: np.ndarray,
    y_train: np.ndarray,
    groups: np.ndarray,
    train_scores: Mapping[str, np.ndarray],
    moments: Mapping[str, tuple[float, float]],
    n_real: int,
    seed: int,
    from_ensemble: bool,
    target_fpr: float,
) -> SeedModel:
    """Fit on one seed's rows (held-out good, shots, then generated defects: the first ``n_real`` are
    real and judge the final score; generated ones only train)."""
    prior = ensemble_score(train_scores, moments) if from_ensemble else None  # the forest's starting score
    clf = make_classifier(seed).fit(X_train, y_train, prior)
    oof = out_of_fold_scores(make_classifier, X_train, y_train, groups, seed=seed, prior=prior)
    real = np.arange(len(y_train)) < n_real
    sel = select(oof, train_scores, y_train, real, moments, prefer_classifier=from_ensemble)
    calibration = calibrate(sel.blend.score(oof, train_scores), y_train, target_fpr)
    return SeedModel(clf, sel, oof, prior, calibration)


__all__ = ["SeedModel", "fit_seed_model"]
