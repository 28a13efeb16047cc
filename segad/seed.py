"""One seed's SegAD model: the classifier on that seed's rows, its out-of-fold margins, the final score
chosen on them, and the threshold calibrated on that score. ``segad.train`` runs it per seed; the
ablation scripts run the same step, so what they compare is what ships.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from segad.calibration import Calibration, calibrate, out_of_fold_scores
from segad.classifier import SegadClassifier
from segad.selection import Evidence, Selection, ensemble_score, select

if TYPE_CHECKING:
    from segad.prepare import Prepared
    from segad.protocol import SeedSplit


@dataclass(frozen=True)
class JudgeRows:
    """``segad.judging``'s rows for one seed's final score, all from the detectors' fold models: the
    classifier's rows (same order and labels as ``Prepared.training_rows``) and the fit images."""

    train_X: np.ndarray
    train_scores: dict[str, np.ndarray]
    good_X: np.ndarray
    good_scores: dict[str, np.ndarray]

    @classmethod
    def for_seed(
        cls, prep: Prepared, judge_X: tuple[np.ndarray, np.ndarray, np.ndarray], sp: SeedSplit, n_gen: int
    ) -> JudgeRows:
        """One seed's rows from the run's fold-model features (``feature_rows.judge_features``: of the fit
        images, the scored images and the generated defects) and scores (``prep.judge``)."""
        if prep.judge is None:
            raise ValueError("no cross-fitted maps: prepare ran with --judge-folds 0")
        good_X, scored_X, gen_X = judge_X
        train_X = prep.training_rows(scored_X, gen_X[:n_gen], sp)[0]
        train_scores = prep.judge.training_scores(sp.train_defects, prep.n_hold, n_gen)
        return cls(train_X, train_scores, good_X, prep.judge.good_scores)


@dataclass(frozen=True)
class SeedModel:
    classifier: SegadClassifier
    selection: Selection  # the final score (a blend of margins and detector scores) and why
    oof: np.ndarray  # each training row's margin from a classifier fit without its fold
    prior: np.ndarray | None  # the ensemble score the forest started from, on the training rows (or None)
    calibration: Calibration  # the threshold, conformal on the good rows' out-of-fold final scores
    evidence: Evidence | None = None  # what the final score was judged on, when not the rows above

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
    judge: JudgeRows | None = None,
) -> SeedModel:
    """Fit on one seed's rows (held-out good, shots, then generated defects: the first ``n_real`` are
    real and judge the final score; generated ones only train). ``judge``: the final score is judged on
    the detectors' fold models instead, and on every good training image (``segad.judging``): a second
    classifier, fit as this one on the fold models' features, gives the margins judged there."""
    prior = ensemble_score(train_scores, moments) if from_ensemble else None  # the forest's starting score
    clf = make_classifier(seed).fit(X_train, y_train, prior)
    oof = out_of_fold_scores(make_classifier, X_train, y_train, groups, seed=seed, prior=prior)
    real = np.arange(len(y_train)) < n_real
    evidence = None
    if judge is not None:  # the same classifier and protocol, on the fold models' features
        judge_prior = ensemble_score(judge.train_scores, moments) if from_ensemble else None
        good_prior = ensemble_score(judge.good_scores, moments) if from_ensemble else None
        judge_oof = out_of_fold_scores(make_classifier, judge.train_X, y_train, groups, seed=seed, prior=judge_prior)
        judge_clf = make_classifier(seed).fit(judge.train_X, y_train, judge_prior)
        good_margins = judge_clf.decision_function(judge.good_X, good_prior)
        evidence = Evidence(judge_oof, judge.train_scores, good_margins, judge.good_scores)
    sel = select(oof, train_scores, y_train, real, moments, prefer_classifier=from_ensemble, evidence=evidence)
    calibration = calibrate(sel.blend.score(oof, train_scores), y_train, target_fpr)
    return SeedModel(clf, sel, oof, prior, calibration, evidence)


__all__ = ["JudgeRows", "SeedModel", "fit_seed_model"]
