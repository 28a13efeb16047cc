"""The fine-tuned classifier: a short CPU fit, its activation map, determinism, persistence, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detectors.errors import InputError
from segad.supervised import ClassifierConfig, FineTunedClassifier

# CPU-sized: 3 epochs x 5 steps of 8 images, layer3 with ImageNet batch-norm statistics (see test_devnet).
SHORT = {"epochs": 3, "steps_per_epoch": 5, "batch_size": 8, "device": "cpu", "layer": "layer3", "freeze_bn": True}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def fitted(data) -> FineTunedClassifier:
    return FineTunedClassifier(**SHORT).fit(data.normal, data.defects)


def test_a_short_fit_learns_to_rank_defects_above_good_images(fitted: FineTunedClassifier, data) -> None:
    losses = fitted.losses_
    assert len(losses) == 15 and np.mean(losses[-5:]) < np.mean(losses[:5])
    good, bad = fitted.decision_function(data.test_good), fitted.decision_function(data.test_defects)
    # 15 steps learn the missing part (the last two test defects), not yet the small contamination.
    assert bad[2:].min() > good.max()


def test_the_map_is_what_the_score_is_made_of(fitted: FineTunedClassifier, data) -> None:
    maps = fitted.patch_scores(data.test_defects)
    assert maps.shape == (4, 6, 6)  # layer3 at 96 px
    bias = float(fitted.model_.fc.bias.detach())
    np.testing.assert_allclose(maps.mean(axis=(1, 2)) + bias, fitted.decision_function(data.test_defects), atol=1e-4)


def test_it_trains_with_sgd_and_momentum(data) -> None:
    # Momentum carries the last steps' direction: with it, the same 15 steps end elsewhere.
    plain = FineTunedClassifier(**SHORT, momentum=0.0).fit(data.normal, data.defects)
    heavy = FineTunedClassifier(**SHORT).fit(data.normal, data.defects)
    assert not torch.equal(plain.model_.fc.weight, heavy.model_.fc.weight)
    assert isinstance(plain._optimizer([torch.nn.Parameter(torch.zeros(1))]), torch.optim.SGD)


def test_seeded_fits_repeat_and_save_load_scores_the_same(fitted: FineTunedClassifier, data, tmp_path) -> None:
    again = FineTunedClassifier(**SHORT).fit(data.normal, data.defects)
    assert again.losses_ == fitted.losses_
    loaded = FineTunedClassifier.load(fitted.save(tmp_path / "clf.safetensors"), device="cpu")
    test = data.test_defects
    assert np.array_equal(loaded.decision_function(test), fitted.decision_function(test))
    assert loaded.config == fitted.config


@pytest.mark.parametrize(
    ("option", "message"),
    [({"momentum": 1.0}, "momentum must be in"), ({"focal_alpha": 1.5}, "focal_alpha must be in"),
     ({"focal_gamma": -1}, "focal_gamma must be >= 0"), ({"topk_ratio": 0.1}, "has no option")],
)  # fmt: skip
def test_bad_options_are_named(option: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        FineTunedClassifier(ClassifierConfig(), **option)
