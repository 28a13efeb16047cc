from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from detectors import DETECTORS, load_detector, make_detector
from detectors.cdo import CDO, cdo_loss, discrepancy
from detectors.errors import InputError
from tests.conftest import TinySet

# Two levels and a short schedule at a higher learning rate: enough for the planted defects on a CPU.
FAST = {
    "epochs": 15,
    "batch_size": 4,
    "learning_rate": 3e-3,
    "layers": "layer1+layer2",
    "device": "cpu",
    "progress": False,
}


@pytest.fixture(scope="module")
def fitted(tiny: TinySet, one_torch_thread) -> CDO:
    return make_detector("cdo", **FAST).fit(tiny.train)


def test_training_lowers_the_loss_and_finds_the_defects(fitted: CDO, tiny: TinySet) -> None:
    curve = fitted.loss_history_["train"]
    steps = 15 * -(-len(tiny.train) // 4)
    assert len(curve) == steps
    # The loss is normal minus anomalous discrepancy, so it falls as the margin between them grows.
    assert np.mean(curve[-5:]) < 0.5 * np.mean(curve[:5])
    (report,) = fitted.training_reports_
    assert report.steps == steps and report.seconds > 0
    out = fitted.predict(tiny.test)
    assert out.maps.shape == (len(tiny.test), 96, 96) and out.maps.dtype == np.float32
    assert np.isfinite(out.maps).all() and out.maps.min() >= 0
    assert roc_auc_score(tiny.labels, out.scores) >= 0.9


def test_seeded_training_and_save_load(fitted: CDO, tiny: TinySet, tmp_path: Path, one_torch_thread) -> None:
    short = {**FAST, "epochs": 1}
    a = make_detector("cdo", **short).fit(tiny.train).loss_history_["train"]
    assert make_detector("cdo", **short).fit(tiny.train).loss_history_["train"] == a
    assert make_detector("cdo", **short, seed=1).fit(tiny.train).loss_history_["train"] != a
    loaded = load_detector(fitted.save(tmp_path / "cdo.safetensors"))
    assert np.array_equal(loaded.predict(tiny.test).maps, fitted.predict(tiny.test).maps)
    assert loaded.training_reports_ == fitted.training_reports_


def test_loss_rewards_a_margin() -> None:
    t = torch.randn(2, 8, 4, 4)
    mask = torch.zeros(2, 1, 16, 16)
    mask[:, :, :8, :8] = 1  # the top-left quarter of the grid is anomalous
    assert torch.allclose(discrepancy(t, 3 * t), torch.zeros(2, 4, 4), atol=1e-6)  # scale-free
    assert torch.allclose(discrepancy(t, -t), torch.full((2, 4, 4), 4.0))
    matched = t.clone()
    missed = t.clone()
    missed[:, :, :2, :2] = -t[:, :, :2, :2]  # the student misses exactly the anomalous features
    for oom in (False, True):
        good = cdo_loss([t], [missed], mask, gamma=2.0, oom=oom)
        assert good < 0 and good < cdo_loss([t], [matched], mask, gamma=2.0, oom=oom) <= 1e-6
    # Without anomalies it is the plain (weighted) distillation loss, >= 0.
    assert cdo_loss([t], [torch.randn_like(t)], None, gamma=2.0, oom=True) > 0


def test_registry_and_bad_input(tiny: TinySet) -> None:
    assert DETECTORS["cdo"] is CDO
    with pytest.raises(InputError, match="at least 16x16"):  # layer2 is at stride 8
        make_detector("cdo", **FAST).fit(tiny.train[:, :, :12, :12])
    with pytest.raises(InputError, match="at least two good images"):
        make_detector("cdo", **FAST).fit(tiny.train[:1])
    with pytest.raises(InputError, match="no untrained student"):
        make_detector("cdo", **FAST, backbone="nope").fit(tiny.train)
