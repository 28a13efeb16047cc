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


def test_ssim_autoencoder_learns_and_finds_planted_defects(quality_set: TinySet, one_torch_thread) -> None:
    # The SSIM loss starts on a plateau (about 0.54; 8-wide nets stay there). When a 16-wide net leaves it
    # is chaotic: after 80-140 steps over seeds 0-14 (80-170 on ``tiny``'s 12 images, where seed 0 left it
    # before step 150 on one CPU and after it on another). 300 steps leave room; the loss then ends near
    # 0.32, 0.58-0.62 of its start.
    ssim = {**FAST, "width": 16, "latent_dim": 64, "batch_size": 4, "learning_rate": 1e-3}
    det = make_detector("ae_ssim", **ssim, steps=300, seed=0).fit(quality_set.train)
    curve = det.loss_history_["train"]
    assert np.mean(curve[-5:]) < 0.8 * np.mean(curve[:5])  # it left the plateau
    test, labels, masks = quality_set.test, quality_set.labels, quality_set.masks
    out = det.predict(test)
    assert out.maps.shape == (len(test), 96, 96) and np.isfinite(out.maps).all()
    # What SSIM is for: it localises. Over seeds 0-14, pixel AUROC 0.94-0.97 in the defective images and
    # the map 2.0-2.2x as bright inside the defects as outside ...
    bad = labels == 1
    assert roc_auc_score(masks[bad].ravel(), out.maps[bad].ravel()) >= 0.9
    assert out.maps[bad][masks[bad]].mean() > 1.5 * out.maps[bad][~masks[bad]].mean()
    # ... while the image score, the map's maximum, is weaker this early (AUROC 0.69-0.98): the thin pins,
    # whose place varies by a few pixels, rebuild about as poorly as a small defect. On ``tiny``'s 12
    # training images it is 0.61-0.83 (seeds 0-17), the net having seen fewer of the pins' places.
    assert roc_auc_score(labels, out.scores) >= 0.6


def test_registry_and_bad_input(tiny: TinySet) -> None:
    assert DETECTORS["ae_l2"] is AutoencoderL2 and DETECTORS["ae_ssim"] is AutoencoderSSIM
    with pytest.raises(InputError, match="at least two good images"):
        make_detector("ae_l2", **FAST, steps=1).fit(tiny.train[:1])
