from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from detectors import DETECTORS, load_detector, make_detector
from detectors.errors import InputError
from detectors.variation_model import VariationModel, estimate_shift, shift
from tests.conftest import TinySet

CPU = {"progress": False, "device": "cpu"}


def test_the_statistics_are_the_good_images_mean_and_spread(tiny: TinySet) -> None:
    model = make_detector("variation_model", **CPU, align="none").fit(tiny.train)
    x = torch.as_tensor(tiny.train).double()
    assert torch.allclose(model.mean_, x.mean(0).float(), atol=1e-6)
    assert torch.allclose(model.std_, x.std(0).float(), atol=1e-6)


def test_phase_correlation_undoes_a_shift(tiny: TinySet) -> None:
    image = torch.as_tensor(tiny.train[0]).double()
    moved = torch.stack([shift(image, 3, -5), shift(image, -2, 4)])
    assert estimate_shift(image.mean(0), moved.mean(1)).tolist() == [[3, -5], [-2, 4]]
    assert torch.equal(shift(shift(image, 3, -5), -3, 5)[:, 3:-3, 5:-5], image[:, 3:-3, 5:-5])


def test_planted_defects_stand_out_of_aligned_good_images(tiny: TinySet) -> None:
    model = make_detector("variation_model", **CPU).fit(tiny.train)
    out = model.predict(tiny.test)
    assert out.maps.shape == (len(tiny.test), 96, 96) and np.isfinite(out.maps).all()
    assert roc_auc_score(tiny.labels, out.scores) >= 0.9
    # A good image moved by several pixels is aligned before it is compared: no worse than where it was.
    moved = shift(torch.as_tensor(tiny.test[:1]), 4, -6).numpy()  # beyond the good images' own jitter
    assert model.predict(moved).scores[0] <= 1.2 * out.scores[0]


def test_save_load_and_bad_input(tiny: TinySet, tmp_path: Path) -> None:
    model = make_detector("variation_model", **CPU).fit(tiny.train)
    loaded = load_detector(model.save(tmp_path / "vm.safetensors"))
    assert np.array_equal(loaded.predict(tiny.test).maps, model.predict(tiny.test).maps)
    assert DETECTORS["variation_model"] is VariationModel
    with pytest.raises(InputError, match="align must be one of"):
        make_detector("variation_model", **CPU, align="rotation").fit(tiny.train)
    with pytest.raises(InputError, match="at least two good images"):
        make_detector("variation_model", **CPU).fit(tiny.train[:1])
