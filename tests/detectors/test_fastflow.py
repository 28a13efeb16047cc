from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from detectors import DETECTORS, load_detector, make_detector
from detectors.fastflow import FastFlow
from tests.conftest import TinySet
from tests.detectors.test_patchcore import peak_in_mask

FAST = {"epochs": 8, "progress": False, "device": "cpu", "batch_size": 4}


@pytest.fixture(scope="module")
def fitted(tiny: TinySet) -> FastFlow:
    return make_detector("fastflow", **FAST).fit(tiny.train)


def test_likelihood_rises_and_defects_stand_out(fitted: FastFlow, tiny: TinySet) -> None:
    curve = fitted.loss_history_["train"]
    assert np.mean(curve[-3:]) < np.mean(curve[:3]) - 0.5  # NLL per dimension falls
    out = fitted.predict(tiny.test)
    assert out.maps.shape == (len(tiny.test), 96, 96) and np.isfinite(out.maps).all()
    assert np.allclose(out.scores, out.maps.reshape(len(out.maps), -1).max(1))
    assert roc_auc_score(tiny.labels, out.scores) >= 0.9
    bad = tiny.labels == 1
    assert peak_in_mask(out.maps[bad], tiny.masks[bad]).mean() >= 0.5


def test_seeded_save_load_and_checkpoint_resume(fitted: FastFlow, tiny: TinySet, tmp_path: Path) -> None:
    loaded = load_detector(fitted.save(tmp_path / "ff.safetensors"))
    assert np.array_equal(loaded.predict(tiny.test).maps, fitted.predict(tiny.test).maps)
    assert loaded.loss_history_ == fitted.loss_history_
    # A fit that leaves checkpoints behind, then a second fit that resumes from the last one:
    # both equal the uninterrupted run, step for step.
    ckpt = {**FAST, "checkpoint_dir": str(tmp_path / "ckpt"), "checkpoint_every": 5}
    first = make_detector("fastflow", **ckpt).fit(tiny.train)
    assert list((tmp_path / "ckpt").glob("fastflow-train.safetensors"))
    resumed = make_detector("fastflow", **ckpt).fit(tiny.train)
    assert resumed.training_reports_[0].resumed_from_step > 0
    for det in (first, resumed):
        assert np.allclose(det.loss_history_["train"], fitted.loss_history_["train"])
        assert np.allclose(det.predict(tiny.test).maps, fitted.predict(tiny.test).maps, atol=1e-5)


def test_registry_and_bad_input(tiny: TinySet) -> None:
    assert "fastflow" in DETECTORS
    with pytest.raises(ValueError, match="at least 32x32"):
        make_detector("fastflow", **FAST).fit(tiny.train[:, :, :16, :16])
    with pytest.raises(ValueError, match="no option"):
        make_detector("fastflow", flow_step=3)
