from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from detectors import DETECTORS, load_detector, make_detector
from detectors.rd4ad import RD4AD
from tests.conftest import TinySet

FAST = {"epochs": 6, "progress": False, "device": "cpu", "batch_size": 4}


@pytest.fixture(scope="module")
def fitted(tiny: TinySet) -> RD4AD:
    return make_detector("rd4ad", **FAST).fit(tiny.train)


def test_training_lowers_the_loss_and_maps_have_the_image_size(fitted: RD4AD, tiny: TinySet) -> None:
    curve = fitted.loss_history_["train"]
    steps = 6 * -(-len(tiny.train) // 4)  # 6 epochs of ceil(n / 4) batches, one point per step
    assert len(curve) == steps
    assert np.mean(curve[-3:]) < 0.7 * np.mean(curve[:3])
    (report,) = fitted.training_reports_
    assert report.steps == steps and report.seconds > 0 and report.peak_memory_mib > 0
    out = fitted.predict(tiny.test)
    assert out.maps.shape == (len(tiny.test), 96, 96) and np.isfinite(out.maps).all()
    assert roc_auc_score(tiny.labels, out.scores) >= 0.8


def test_seeded_training_and_save_load(fitted: RD4AD, tiny: TinySet, tmp_path: Path) -> None:
    again = make_detector("rd4ad", **FAST).fit(tiny.train)
    assert np.allclose(again.loss_history_["train"], fitted.loss_history_["train"])
    loaded = load_detector(fitted.save(tmp_path / "rd.safetensors"))
    assert np.array_equal(loaded.predict(tiny.test).maps, fitted.predict(tiny.test).maps)
    assert loaded.training_reports_ == fitted.training_reports_  # the report travels with the weights


def test_registry_and_bad_input(tiny: TinySet) -> None:
    assert "rd4ad" in DETECTORS
    with pytest.raises(ValueError, match="at least 64x64"):
        make_detector("rd4ad", **FAST).fit(tiny.train[:, :, :32, :32])
