from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

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
    assert s[y == 1].mean() > s[y == 0].mean() + 1.0
    assert clf.model_.get_params()["scale_pos_weight"] == pytest.approx(3.0)  # good / defect
    assert clf.model_.get_params()["objective"] == "binary:logitraw"


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
