from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from detectors import DETECTORS, load_detector, make_detector
from detectors.errors import InputError
from detectors.simplenet import SimpleNet, patch_embedding, truncated_l1
from tests.conftest import TinySet

# Small features and a short schedule; noise at 0.3 of the features' spread and lr 1e-3, so the
# discriminator learns its boundary within 90 steps (at the defaults it takes several hundred).
FAST = {
    "epochs": 30,
    "batch_size": 4,
    "embed_dim": 128,
    "pretrain_dim": 128,
    "disc_hidden": 128,
    "noise_std": 0.3,
    "adaptor_lr": 1e-3,
    "disc_lr": 1e-3,
    "device": "cpu",
    "progress": False,
}


@pytest.fixture(scope="module")
def fitted(tiny: TinySet, one_torch_thread) -> SimpleNet:
    return make_detector("simplenet", **FAST).fit(tiny.train)


def test_training_lowers_the_loss_and_finds_the_defects(fitted: SimpleNet, tiny: TinySet) -> None:
    curve = fitted.loss_history_["train"]
    steps = 30 * -(-len(tiny.train) // 4)  # 30 epochs of ceil(n / 4) batches, one point per step
    assert len(curve) == steps
    # 1.0 is a discriminator that gave up (D = 0 for good and noisy alike); well below it, it separates them.
    assert np.mean(curve[-5:]) < 0.6 and np.mean(curve[-5:]) < 0.5 * np.mean(curve[:5])
    (report,) = fitted.training_reports_
    assert report.steps == steps and report.seconds > 0
    out = fitted.predict(tiny.test)
    assert out.maps.shape == (len(tiny.test), 96, 96) and out.maps.dtype == np.float32
    assert np.isfinite(out.maps).all() and out.scores.shape == (len(tiny.test),)
    assert np.allclose(out.scores, out.maps.reshape(len(out.maps), -1).max(1))
    assert roc_auc_score(tiny.labels, out.scores) >= 0.9


def test_seeded_training_and_save_load(fitted: SimpleNet, tiny: TinySet, tmp_path: Path, one_torch_thread) -> None:
    short = {**FAST, "epochs": 2}
    a = make_detector("simplenet", **short).fit(tiny.train).loss_history_["train"]
    assert make_detector("simplenet", **short).fit(tiny.train).loss_history_["train"] == a
    assert make_detector("simplenet", **short, seed=1).fit(tiny.train).loss_history_["train"] != a
    loaded = load_detector(fitted.save(tmp_path / "simplenet.safetensors"))
    assert np.array_equal(loaded.predict(tiny.test).maps, fitted.predict(tiny.test).maps)
    assert loaded.feature_scale_ == fitted.feature_scale_ and loaded.training_reports_ == fitted.training_reports_


def test_embedding_and_loss() -> None:
    # Two levels, the coarser at half the grid: one (B, h, w, D) feature per finest-level position.
    levels = [torch.randn(2, 4, 6, 6), torch.randn(2, 8, 3, 3)]
    assert patch_embedding(levels, 3, 16, 10).shape == (2, 6, 6, 10)
    # A constant level stays constant inside (away from the zero padding) after pooling.
    flat = patch_embedding([torch.ones(1, 2, 5, 5)], 3, 7, 7)
    assert torch.allclose(flat[0, 2, 2], torch.ones(7))
    # Truncated L1: nothing to learn once good scores are >= th and noisy ones <= -th.
    assert truncated_l1(torch.tensor([0.6, 2.0]), torch.tensor([-0.5, -3.0]), 0.5) == 0
    assert truncated_l1(torch.tensor([0.0]), torch.tensor([0.0]), 0.5) == pytest.approx(1.0)


def test_registry_and_bad_input(tiny: TinySet) -> None:
    assert DETECTORS["simplenet"] is SimpleNet
    with pytest.raises(InputError, match="at least 32x32"):
        make_detector("simplenet", **FAST).fit(tiny.train[:, :, :24, :24])
    with pytest.raises(InputError, match="patch_size must be a positive odd number"):
        make_detector("simplenet", patch_size=2)
