from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from detectors import DETECTORS, load_detector, make_detector
from detectors.anogan import AnoGAN, Generator
from detectors.errors import InputError
from tests.conftest import TinySet

# Narrow nets, one critic step per generator step and high learning rates; the paper's widths,
# 5 critic steps and 100,000 + 50,000 steps at batch 64 are the defaults.
FAST = {
    "progress": False,
    "device": "cpu",
    "width": 8,
    "latent_dim": 16,
    "batch_size": 8,
    "n_critic": 1,
    "gan_learning_rate": 3e-3,
    "encoder_learning_rate": 5e-3,
}


@pytest.fixture(scope="module")
def fitted(tiny: TinySet, one_torch_thread) -> AnoGAN:
    return make_detector("anogan", **FAST, gan_steps=45, encoder_steps=30).fit(tiny.train)


def _sample_gap(generator: Generator, data: torch.Tensor) -> float:
    """Mean over fixed latent draws of the squared distance from G(z) to its nearest training image."""
    z = torch.randn(16, FAST["latent_dim"], generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        fake = generator.eval()(z)
    return float(torch.cdist(fake.flatten(1), data.flatten(1)).min(1).values.pow(2).mean())


def test_gan_learns_the_good_images(fitted: AnoGAN, tiny: TinySet) -> None:
    data = AnoGAN._prepare(torch.as_tensor(tiny.train))
    torch.manual_seed(0)
    untrained = Generator(FAST["width"], FAST["latent_dim"])
    # The generator's samples move close to the training images ...
    assert _sample_gap(fitted.generator_, data) < 0.5 * _sample_gap(untrained, data)
    # ... and the critic tells real from generated: its Wasserstein estimate is positive.
    assert np.mean(fitted.loss_history_["gan"][-10:]) > 0


def test_encoder_learns_and_planted_defects_are_found(tiny: TinySet, quality_set: TinySet, one_torch_thread) -> None:
    # Its own fit, longer than ``fitted``'s 45 + 30 steps: after those the paper's score reaches AUROC 0.37
    # to 0.91 over seeds 0-7 on the 40 test images, as the generator may not draw the chip yet (and at
    # seed 0, on ``tiny``'s 10, 0.67 on one CPU and at least 0.8 on another). After 150 + 150 steps seeds
    # 0-15 reach 0.82-0.99 on ``quality_set``'s 40 test images, the map's maximum 0.955-1.0, and the map
    # is 7.3-10.5x as bright inside the defects as outside. (On ``quality_set``'s 60 training images
    # instead of these 12 the same steps fit worse: 0.77-0.96.)
    det = make_detector("anogan", **FAST, gan_steps=150, encoder_steps=150).fit(tiny.train)
    curve = det.loss_history_["encoder"]
    assert len(curve) == 150 and np.mean(curve[-5:]) < 0.4 * np.mean(curve[:5])
    test, labels, masks = quality_set.test, quality_set.labels, quality_set.masks
    out = det.predict(test)
    assert out.maps.shape == (len(test), 96, 96) and np.isfinite(out.maps).all()
    assert roc_auc_score(labels, out.scores) >= 0.8  # the paper's score: residual + feature error
    # The map's maximum finds them too, and the map is brighter inside the defects than outside.
    assert roc_auc_score(labels, out.maps.reshape(len(out.maps), -1).max(1)) >= 0.9
    bad = labels == 1
    assert out.maps[bad][masks[bad]].mean() > 3 * out.maps[bad][~masks[bad]].mean()


def test_seeded_training_and_save_load(fitted: AnoGAN, tiny: TinySet, tmp_path: Path) -> None:
    again = make_detector("anogan", **FAST, gan_steps=3, encoder_steps=2).fit(tiny.train)  # seeded: same start
    assert np.allclose(again.loss_history_["gan"], fitted.loss_history_["gan"][:3])
    loaded = load_detector(fitted.save(tmp_path / "anogan.safetensors"))
    a, b = loaded.predict(tiny.test), fitted.predict(tiny.test)
    assert np.array_equal(a.maps, b.maps) and np.array_equal(a.scores, b.scores)
    assert loaded.loss_history_ == fitted.loss_history_


def test_resumed_fit_equals_uninterrupted(tiny: TinySet, tmp_path: Path, one_torch_thread) -> None:
    # Both nets' Adam state is in the GAN phase's one optimiser, so a resume from its checkpoint is exact.
    opts = {**FAST, "width": 4, "n_critic": 2, "gan_steps": 4, "encoder_steps": 4, "checkpoint_every": 2}
    plain = make_detector("anogan", **opts).fit(tiny.train[:6])
    make_detector("anogan", **opts, checkpoint_dir=str(tmp_path)).fit(tiny.train[:6])  # leaves step-2 checkpoints
    resumed = make_detector("anogan", **opts, checkpoint_dir=str(tmp_path)).fit(tiny.train[:6])
    assert [r.resumed_from_step for r in resumed.training_reports_] == [2, 2]
    assert np.array_equal(resumed.predict(tiny.test[:2]).maps, plain.predict(tiny.test[:2]).maps)


def test_registry_and_bad_input(tiny: TinySet) -> None:
    assert DETECTORS["anogan"] is AnoGAN
    with pytest.raises(InputError, match="at least two good images"):
        make_detector("anogan", **FAST, gan_steps=1, encoder_steps=1).fit(tiny.train[:1])
    for option in ("width", "n_critic", "gan_steps"):
        with pytest.raises(InputError, match=option):
            make_detector("anogan", **{**FAST, option: 0})
    with pytest.raises(InputError, match="kappa"):
        make_detector("anogan", **FAST, kappa=-1.0)
