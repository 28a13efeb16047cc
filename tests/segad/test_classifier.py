from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from detectors.errors import InputError
from segad.classifier import PRESETS, SegadClassifier


def _data(seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(80, 12))
    y = np.r_[np.zeros(60), np.ones(20)]
    X[y == 1, :3] += 2.0
    return X, y


@pytest.mark.parametrize("preset", list(PRESETS))
def test_presets_separate_a_learnable_signal(preset: str) -> None:
    X, y = _data()
    clf = SegadClassifier(preset, seed=1).fit(X, y)
    s = clf.decision_function(X)
    assert roc_auc_score(y, s) > 0.95
    assert clf.feature_importances()[:3].sum() > clf.feature_importances()[3:].sum()  # the signal's columns


@pytest.mark.parametrize("preset", ["brf", "rf", "bt"])
def test_forests_are_segads_xgboost_setup(preset: str) -> None:
    X, y = _data()
    params = SegadClassifier(preset, seed=1).fit(X, y).model_.get_params()
    assert params["scale_pos_weight"] == pytest.approx(3.0)  # good / defect
    assert params["objective"] == "binary:logitraw"


def test_logreg_is_linear_in_the_standardised_features_and_fills_nan_with_the_mean(tmp_path: Path) -> None:
    X, y = _data()
    X[5, 4] = np.nan
    clf = SegadClassifier("logreg", C=0.5).fit(X, y)
    filled = X.copy()
    filled[5, 4] = np.nanmean(X[:, 4])
    assert np.allclose(clf.decision_function(X), clf.decision_function(filled))
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    Z = StandardScaler().fit_transform(filled)
    ref = LogisticRegression(C=0.5, class_weight="balanced", max_iter=5000).fit(Z, y).decision_function(Z)
    assert np.allclose(SegadClassifier("logreg", C=0.5).fit(filled, y).decision_function(filled), ref, atol=1e-4)
    clf.save(tmp_path / "c.json")
    loaded = SegadClassifier.load(tmp_path / "c.json", "logreg")
    assert np.array_equal(loaded.decision_function(X), clf.decision_function(X)) and loaded.params["C"] == 0.5
    with pytest.raises(ValueError, match="logreg takes only C"):
        SegadClassifier("logreg", max_depth=3)


def test_seeded_and_saved_as_json(tmp_path: Path) -> None:
    X, y = _data()
    a = SegadClassifier(seed=5).fit(X, y).decision_function(X)
    clf = SegadClassifier(seed=5).fit(X, y)
    assert np.array_equal(a, clf.decision_function(X))
    clf.save(tmp_path / "c.json")
    assert np.array_equal(SegadClassifier.load(tmp_path / "c.json").decision_function(X), a)


def test_bad_preset_and_one_class_data() -> None:
    with pytest.raises(ValueError, match="brf, rf, bt"):
        SegadClassifier("gbm")
    X, y = _data()
    with pytest.raises(ValueError, match="good and defect"):
        SegadClassifier().fit(X, np.zeros(len(y)))


def test_a_forest_started_from_a_prior_keeps_what_the_prior_knows() -> None:
    """Noise features and an informative prior (the ensemble's score): started from the prior, the forest
    ranks like it; from zero it has only the noise."""
    from segad.metrics import image_auroc

    rng = np.random.default_rng(0)
    n_good, n_bad = 60, 10
    y = np.r_[np.zeros(n_good), np.ones(n_bad)].astype(int)
    y_test = np.r_[np.zeros(200), np.ones(40)].astype(int)
    X, X_test = rng.normal(size=(len(y), 20)), rng.normal(size=(len(y_test), 20))
    prior, prior_test = rng.normal(size=len(y)) + 2.5 * y, rng.normal(size=len(y_test)) + 2.5 * y_test
    started = SegadClassifier("brf", seed=0).fit(X, y, prior)
    assert image_auroc(y_test, started.decision_function(X_test, prior_test)) > 0.9
    assert image_auroc(y_test, SegadClassifier("brf", seed=0).fit(X, y).decision_function(X_test)) < 0.7
    with pytest.raises(InputError, match="pass prior="):
        started.decision_function(X_test)
    # A prior that already separates the training rows leaves the trees nothing to learn: the margin is
    # the prior's logistic fit alone (a forest fit without it would have learned the noise instead).
    sure = rng.normal(size=len(y)) * 0.3 + 4.0 * y
    model = SegadClassifier("brf", seed=0).fit(X, y, sure)
    a, b = model.prior_
    assert np.std(model.decision_function(X, sure) - (a * sure + b)) < 1e-3 * np.std(a * sure + b)
    with pytest.raises(InputError, match="needs a forest"):
        SegadClassifier("logreg").fit(X, y, prior)
