from __future__ import annotations

import numpy as np
import pytest

from features.vector import feature_names
from segad.classifier import SegadClassifier
from segad.explain import explain
from segad.selection import ENSEMBLE, ScoreBlend

DETECTORS = ("patchcore", "padim")
NAMES = feature_names(DETECTORS, n_segments=3)
DRIVER = NAMES.index("padim/seg1/q995")  # the one feature that makes a defect here


def _rows(n: int = 120, seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, len(NAMES)))
    y = (np.arange(n) % 3 == 0).astype(int)
    X[y == 1, DRIVER] += 4.0
    scores = {d: X[:, NAMES.index(f"{d}/score")] for d in DETECTORS}
    return X, y, scores


def _blend(weight: float) -> ScoreBlend:
    return ScoreBlend(weight, ENSEMBLE, {"patchcore": (0.1, 1.2), "padim": (-0.2, 0.8)}, (-1.0, 2.5))


@pytest.mark.parametrize("preset", ["brf", "logreg"])
@pytest.mark.parametrize("weight", [1.0, 0.6, 0.0])
def test_the_shares_add_up_to_the_score(preset: str, weight: float) -> None:
    X, y, scores = _rows()
    clf = SegadClassifier(preset, seed=0).fit(X, y)
    blend = _blend(weight)
    expected = blend.score(clf.decision_function(X), scores)
    got = explain(blend, clf, NAMES, X, scores)
    total = np.array([sum(r.value for r in e.reasons) + e.constant for e in got])
    np.testing.assert_allclose(total, expected, atol=1e-4)
    # One share per (detector, segment) and per detector image score.
    assert {(r.detector, r.segment) for r in got[0].reasons} <= {(d, s) for d in DETECTORS for s in (0, 1, 2, None)}


def test_a_forest_started_from_the_ensemble_keeps_the_start_in_the_constant() -> None:
    X, y, scores = _rows()
    blend = _blend(1.0)
    prior = blend.ensemble_score(scores)
    clf = SegadClassifier("brf", seed=0).fit(X, y, prior=prior)
    got = explain(blend, clf, NAMES, X, scores, prior)
    total = np.array([sum(r.value for r in e.reasons) + e.constant for e in got])
    np.testing.assert_allclose(total, blend.score(clf.decision_function(X, prior), scores), atol=1e-4)


@pytest.mark.parametrize("preset", ["brf", "logreg"])
def test_the_segment_that_makes_the_defect_is_its_top_reason(preset: str) -> None:
    X, y, scores = _rows()
    clf = SegadClassifier(preset, seed=0).fit(X, y)
    got = explain(_blend(1.0), clf, NAMES, X, scores)
    defects = [e for e, label in zip(got, y, strict=True) if label == 1]
    tops = [(e.top_segment.detector, e.top_segment.segment) for e in defects if e.top_segment]
    assert len(tops) == len(defects) and tops.count(("padim", 1)) >= 0.9 * len(defects)
    assert str(defects[0].top(1)[0]).startswith("padim segment 1 +")


def test_without_the_classifier_the_reasons_are_the_detectors_scores() -> None:
    *_, scores = _rows()
    got = explain(_blend(0.0), None, NAMES, None, scores)
    assert {r.segment for r in got[0].reasons} == {None}
    with pytest.raises(ValueError, match="uses the classifier"):
        explain(_blend(0.5), None, NAMES, None, scores)
