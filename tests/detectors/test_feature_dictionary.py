from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from detectors import DETECTORS, load_detector, make_detector
from detectors.errors import InputError
from detectors.feature_dictionary import FeatureDictionary
from tests.conftest import TinySet

FAST = {"progress": False, "device": "cpu", "n_words": 16}


@pytest.fixture(scope="module")
def fitted(tiny: TinySet, one_torch_thread) -> FeatureDictionary:
    return make_detector("feature_dictionary", **FAST).fit(tiny.train)


def test_the_dictionary_finds_planted_defects(fitted: FeatureDictionary, tiny: TinySet) -> None:
    assert fitted.words_.shape[0] == 16
    assert fitted.words_.shape[1] == fitted.pca_components_.shape[0] < 152  # PCA kept 95% in fewer dims
    out = fitted.predict(tiny.test)
    assert out.maps.shape == (len(tiny.test), 96, 96) and np.isfinite(out.maps).all() and (out.maps >= 0).all()
    assert roc_auc_score(tiny.labels, out.scores) >= 0.9


def test_seeded_fit_and_save_load(fitted: FeatureDictionary, tiny: TinySet, tmp_path: Path) -> None:
    again = make_detector("feature_dictionary", **FAST).fit(tiny.train)
    assert np.array_equal(again.words_.numpy(), fitted.words_.numpy())
    loaded = load_detector(fitted.save(tmp_path / "fd.safetensors"))
    assert np.array_equal(loaded.predict(tiny.test).maps, fitted.predict(tiny.test).maps)


def test_registry_and_bad_input(tiny: TinySet) -> None:
    assert DETECTORS["feature_dictionary"] is FeatureDictionary
    with pytest.raises(InputError, match="cannot make 100000 words"):
        make_detector("feature_dictionary", **{**FAST, "n_words": 100_000}).fit(tiny.train[:2])
    with pytest.raises(InputError, match="explained_variance in"):
        make_detector("feature_dictionary", **{**FAST, "explained_variance": 1.5}).fit(tiny.train)
