from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from detectors import DETECTORS, load_detector, make_detector
from detectors.backbones import torchvision_weights_path
from detectors.errors import InputError
from detectors.pfm import PFM, position_encoding
from tests.conftest import TinySet

# Small projectors and a short schedule: the paper's widths and 200 epochs are the defaults.
FAST = {"epochs": 20, "progress": False, "device": "cpu", "batch_size": 4, "latent_dims": "32+32+64"}
NAMES = ("pfm", "pefm")


@pytest.fixture(scope="module", params=NAMES)
def fitted(request: pytest.FixtureRequest, tiny: TinySet, one_torch_thread) -> PFM:
    return make_detector(request.param, **FAST).fit(tiny.train)


def test_training_lowers_the_loss_and_finds_planted_defects(fitted: PFM, tiny: TinySet) -> None:
    curve = fitted.loss_history_["train"]
    assert len(curve) == 20 * 3  # 20 epochs of ceil(12 / 4) batches
    assert np.mean(curve[-3:]) < 0.3 * np.mean(curve[:3])
    out = fitted.predict(tiny.test)
    assert out.maps.shape == (len(tiny.test), 96, 96) and np.isfinite(out.maps).all()
    assert roc_auc_score(tiny.labels, out.scores) >= 0.9


def test_seeded_training_and_save_load(fitted: PFM, tiny: TinySet, tmp_path: Path) -> None:
    again = make_detector(fitted.name, **FAST).fit(tiny.train)
    assert np.allclose(again.loss_history_["train"], fitted.loss_history_["train"])
    loaded = load_detector(fitted.save(tmp_path / "pfm.safetensors"))
    assert type(loaded) is type(fitted) and loaded.config == fitted.config
    assert np.array_equal(loaded.predict(tiny.test).maps, fitted.predict(tiny.test).maps)


def test_pefm_is_pfm_with_position_encoding() -> None:
    pfm, pefm = DETECTORS["pfm"].config_class(), DETECTORS["pefm"].config_class()
    assert not pfm.position_encoding and pefm.position_encoding
    pe = position_encoding(8, 3, 5)  # x in channels 0-3, y in channels 4-7
    assert torch.allclose(pe[0, 1], torch.sin(torch.arange(5.0)))  # lowest x frequency, any row
    assert torch.allclose(pe[5, :, 2], torch.cos(torch.arange(3.0)))  # lowest y frequency, any column
    assert torch.allclose(pe[2, 0], torch.sin(torch.arange(5.0) * math.exp(-math.log(1e4) / 2)))


def test_bad_input(tiny: TinySet) -> None:
    with pytest.raises(InputError, match="layer4 has none"):
        make_detector("pfm", **{**FAST, "layers": "layer3+layer4"}).fit(tiny.train)
    with pytest.raises(InputError, match="latent_dims='32\\+32': give 3"):
        make_detector("pefm", **{**FAST, "latent_dims": "32+32"}).fit(tiny.train)
    with pytest.raises(InputError, match="at least 64x64"):
        make_detector("pfm", **FAST).fit(tiny.train[:, :, :48, :48])
    if not torchvision_weights_path("resnet18").is_file():
        with pytest.raises(InputError, match=r"resnet18.*never downloads"):
            make_detector("pfm", **{**FAST, "target_backbone": "resnet18"}).fit(tiny.train)
