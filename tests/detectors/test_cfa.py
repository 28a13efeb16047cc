from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from detectors import DETECTORS, load_detector, make_detector
from detectors.cfa import CFA
from detectors.errors import InputError
from tests.conftest import TinySet

FAST = {"epochs": 10, "progress": False, "device": "cpu", "batch_size": 4}


@pytest.fixture(scope="module")
def fitted(tiny: TinySet, one_torch_thread) -> CFA:
    return make_detector("cfa", **FAST).fit(tiny.train)


def test_training_lowers_the_loss_and_finds_the_defects(fitted: CFA, tiny: TinySet) -> None:
    curve = fitted.loss_history_["train"]
    steps = 10 * -(-len(tiny.train) // 4)  # 10 epochs of ceil(n / 4) batches, one point per step
    assert len(curve) == steps
    assert np.mean(curve[-5:]) < 0.8 * np.mean(curve[:5])
    assert float(fitted.descriptor_.r.detach()) > 1e-5  # the radius trains, as in the reference
    out = fitted.predict(tiny.test)
    assert out.maps.shape == (len(tiny.test), 96, 96) and np.isfinite(out.maps).all()
    assert out.scores.dtype == np.float32 and np.allclose(out.scores, out.maps.reshape(len(out.maps), -1).max(1))
    assert roc_auc_score(tiny.labels, out.scores) >= 0.9


def test_the_memory_bank_has_one_centre_per_position(fitted: CFA) -> None:
    # 96 px at stride 4: 24 x 24 positions; Lite0 layer1-3 give 24 + 40 + 112 descriptor channels.
    assert tuple(fitted.centres_.shape) == (24 * 24, 176)


def test_seeded_training_and_save_load(fitted: CFA, tiny: TinySet, tmp_path: Path, one_torch_thread) -> None:
    again = make_detector("cfa", **FAST).fit(tiny.train)
    assert np.allclose(again.loss_history_["train"], fitted.loss_history_["train"])
    loaded = load_detector(fitted.save(tmp_path / "cfa.safetensors"))
    assert np.array_equal(loaded.predict(tiny.test).maps, fitted.predict(tiny.test).maps)
    assert loaded.training_reports_ == fitted.training_reports_


def test_registry_and_bad_input(tiny: TinySet) -> None:
    assert DETECTORS["cfa"] is CFA
    with pytest.raises(InputError, match="at least 32x32"):
        make_detector("cfa", **FAST).fit(tiny.train[:, :, :16, :16])
    with pytest.raises(InputError, match="k_nearest must be at least 1"):
        make_detector("cfa", **{**FAST, "k_nearest": 0}).fit(tiny.train)
