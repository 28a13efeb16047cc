"""The saved threshold: split-conformal on out-of-fold margins keeps its false-alarm promise."""

from __future__ import annotations

import numpy as np
import pytest

from segad.calibration import calibrate, conformal_threshold, fold_ids, out_of_fold_scores
from segad.classifier import SegadClassifier


def test_conformal_threshold_keeps_the_target_on_fresh_scores() -> None:
    rng = np.random.default_rng(0)
    fprs = []
    for _ in range(300):
        cal = conformal_threshold(rng.normal(size=199), 0.05)
        assert cal.rank == 190 and cal.meets_target
        fprs.append((rng.normal(size=2000) >= cal.threshold).mean())
    # Conformal: target - 1/(n+1) <= E[FPR] <= target.
    assert 0.05 - 1 / 200 - 0.003 <= np.mean(fprs) <= 0.05 + 0.003


def test_too_few_good_images_give_the_strictest_threshold_and_say_so() -> None:
    scores = np.arange(41.0)
    cal = conformal_threshold(scores, 0.01)
    assert cal.threshold == 40.0 and cal.rank == 41 and cal.guaranteed_fpr == pytest.approx(1 / 42)
    assert not cal.meets_target
    with pytest.raises(ValueError, match="--target-fpr"):
        conformal_threshold(scores, 0.0)


def test_folds_keep_groups_together_and_spread_both_classes() -> None:
    y = np.r_[np.zeros(10), np.ones(5), np.ones(10)].astype(int)
    groups = np.r_[np.arange(10), 10 + np.arange(5), np.repeat(np.arange(5), 2)]  # generated on good 0..4
    fold = fold_ids(y, groups, 5, seed=3)
    for g in np.unique(groups):
        assert len(set(fold[groups == g])) == 1
    assert sorted(np.bincount(fold[:10])) == [2] * 5 and sorted(np.bincount(fold[10:15])) == [1] * 5


def test_calibrated_threshold_holds_where_the_in_sample_quantile_does_not() -> None:
    """A forest memorises its training rows, so a quantile of their margins flags far too many new good
    images; out-of-fold margins stand for unseen ones."""
    rng = np.random.default_rng(1)
    d = 30
    X = np.r_[rng.normal(size=(100, d)), rng.normal(size=(10, d)) + 0.8]
    y = np.r_[np.zeros(100), np.ones(10)].astype(int)
    groups = np.arange(110)

    def make() -> SegadClassifier:
        return SegadClassifier("brf", seed=0, num_parallel_tree=20)

    clf = make().fit(X, y)
    fresh_good = clf.decision_function(rng.normal(size=(4000, d)))
    in_sample = np.quantile(clf.decision_function(X[:100]), 0.95)
    cal = calibrate(out_of_fold_scores(make, X, y, groups), y, 0.05)
    assert cal.n_good == 100 and cal.meets_target
    assert (fresh_good >= in_sample).mean() > 0.12  # the old rule's failure, reproduced
    assert (fresh_good >= cal.threshold).mean() <= 0.05 + 0.03


def test_out_of_fold_scores_come_from_models_that_did_not_see_the_row() -> None:
    rng = np.random.default_rng(2)
    X = rng.normal(size=(40, 5))
    y = np.r_[np.zeros(30), np.ones(10)].astype(int)

    def make() -> SegadClassifier:
        return SegadClassifier("logreg", C=1e3)

    oof = out_of_fold_scores(make, X, y, np.arange(40))
    in_sample = make().fit(X, y).decision_function(X)
    assert np.isfinite(oof).all()
    assert not np.allclose(oof, in_sample)
    with pytest.raises(ValueError, match="--holdout"):
        out_of_fold_scores(make, X[29:], y[29:], np.arange(11))
