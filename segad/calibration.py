"""The saved model's decision threshold, set on scores the classifier never trained on.

A forest's margins on its own training rows are over-fitted low, so a quantile of them puts the
threshold far too low (30% false alarms where 1% was asked on a texture set). Instead every training
row is scored by a model that did not see it: K-fold cross-fitting over the classifier's training
rows, each generated defect in the fold of the good image it was drawn on (so no fold model has seen
a defect made from the good image it scores). Out-of-fold (OOF) margins of the good rows then stand
for the margins of unseen good images.

The threshold on those n good OOF scores is split-conformal: the ``ceil((n + 1)(1 - a))``-th smallest
score, which gives FPR <= a on a new good image whenever it is exchangeable with the calibration images
(Vovk et al.; Angelopoulos & Bates, 2021). That needs n >= 1/a - 1 good images (99 for a = 1%). SegAD
holds out about 40, so for small n the threshold is the maximum OOF score (the strictest rule
the data supports, FPR <= 1/(n + 1) in expectation); the gap between the target and what n can
guarantee is reported (``Calibration.guaranteed_fpr``) and warned about rather than hidden.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from detectors.errors import InputError
from segad.classifier import SegadClassifier

CALIBRATION_FOLDS = 5


@dataclass(frozen=True)
class Calibration:
    """A threshold and what it promises."""

    threshold: float
    target_fpr: float
    n_good: int  # good images whose out-of-fold scores set it
    rank: int  # the threshold is the rank-th smallest of them (1-based)
    guaranteed_fpr: float  # the conformal bound this n supports: 1 - rank / (n + 1)

    @property
    def meets_target(self) -> bool:
        return self.guaranteed_fpr <= self.target_fpr + 1e-12

    def to_params(self) -> dict[str, float | int]:
        return {
            "threshold": self.threshold,
            "target_fpr": self.target_fpr,
            "calibration_n_good": self.n_good,
            "calibration_rank": self.rank,
            "calibration_guaranteed_fpr": self.guaranteed_fpr,
        }


def check_target_fpr(target_fpr: float) -> float:
    if not 0.0 < target_fpr < 1.0:
        raise InputError(f"--target-fpr must be in (0, 1), got {target_fpr}")
    return target_fpr


def conformal_threshold(good_scores: np.ndarray, target_fpr: float) -> Calibration:
    """Split-conformal upper threshold on out-of-sample good scores (higher = more anomalous)."""
    check_target_fpr(target_fpr)
    s = np.sort(np.asarray(good_scores, np.float64))
    n = s.size
    if n == 0:
        raise InputError("no good images to calibrate the threshold on; raise --holdout")
    rank = min(math.ceil((n + 1) * (1.0 - target_fpr)), n)
    return Calibration(float(s[rank - 1]), target_fpr, n, rank, 1.0 - rank / (n + 1))


def fold_ids(y: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """A fold per row, rows of one group in one fold (a generated defect with its source image), groups
    of each class dealt round-robin in a seeded random order. A group's class is its first row's."""
    y, groups = np.asarray(y), np.asarray(groups)
    uniq, first = np.unique(groups, return_index=True)
    group_fold = np.empty(len(uniq), np.int64)
    rng = np.random.default_rng(seed)
    for label in (0, 1):
        members = np.flatnonzero(y[first] == label)
        members = members[rng.permutation(len(members))]
        group_fold[members] = (np.arange(len(members)) + int(rng.integers(folds))) % folds
    return group_fold[np.searchsorted(uniq, groups)]


def out_of_fold_scores(
    make_classifier: Callable[[], SegadClassifier],
    X: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    folds: int = CALIBRATION_FOLDS,
    seed: int = 0,
    prior: np.ndarray | None = None,
) -> np.ndarray:
    """Each row's margin from a classifier trained on the other folds (NaN where a fold cannot train).
    ``prior``: each row's score the classifier starts from (``SegadClassifier.fit``), if it does."""
    y = np.asarray(y).astype(int)
    groups = np.asarray(groups)
    n_good_groups = len(np.unique(groups[y == 0]))
    if n_good_groups < 2:
        raise InputError(f"calibration needs at least 2 held-out good images, got {n_good_groups}; raise --holdout")
    folds = min(folds, n_good_groups)
    fold = fold_ids(y, groups, folds, seed)
    oof = np.full(len(y), np.nan)
    for f in range(folds):
        train, held = fold != f, fold == f
        if len(np.unique(y[train])) < 2:
            continue
        p_train, p_held = (None, None) if prior is None else (prior[train], prior[held])
        oof[held] = make_classifier().fit(X[train], y[train], p_train).decision_function(X[held], p_held)
    return oof


def calibrate(oof_scores: np.ndarray, y: np.ndarray, target_fpr: float) -> Calibration:
    """The threshold for a score whose training rows were scored out of fold (``out_of_fold_scores``,
    or a blend of them with scores that never trained on labels): conformal on its good rows."""
    oof = np.asarray(oof_scores, np.float64)
    return conformal_threshold(oof[(np.asarray(y) == 0) & np.isfinite(oof)], target_fpr)
