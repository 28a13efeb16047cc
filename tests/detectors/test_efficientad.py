from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from detectors.base import load_state
from detectors.efficientad import Autoencoder, EfficientAD, EfficientADConfig, hard_mean, pdn, pdn_grid, quantile
from tests.conftest import TinySet

# CPU-sized: few channels, batches of two, a higher learning rate and a softer hard-feature quantile
# (0.999 of a tiny batch trains on a handful of values), so a few dozen steps already learn.
FAST = {
    "device": "cpu",
    "progress": False,
    "batch_size": 2,
    "out_channels": 16,
    "pdn_width": 32,
    "learning_rate": 1e-3,
    "hard_quantile": 0.9,
}
TRAINED = {**FAST, "teacher_steps": 40, "steps": 60}
QUICK = {**FAST, "teacher_steps": 3, "steps": 3}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def fitted(tiny: TinySet, one_torch_thread) -> EfficientAD:
    return EfficientAD(**TRAINED).fit(tiny.train)


def test_training_lowers_both_losses_and_finds_the_defects(fitted: EfficientAD, tiny: TinySet) -> None:
    assert [r.phase for r in fitted.training_reports_] == ["efficientad teacher", "efficientad student"]
    for phase, steps in (("teacher", 40), ("student", 60)):
        curve = fitted.loss_history_[phase]
        assert len(curve) == steps  # under 100 steps the loop logs every step
        assert np.mean(curve[-5:]) < 0.8 * np.mean(curve[:5]), phase
    out = fitted.predict(tiny.test)
    assert out.maps.shape == (len(tiny.test), 96, 96) and out.maps.dtype == np.float32
    assert np.isfinite(out.maps).all()
    assert np.array_equal(out.scores, out.maps.reshape(len(out.maps), -1).max(1))
    assert roc_auc_score(tiny.labels, out.scores) >= 0.75


def test_save_load_round_trip(fitted: EfficientAD, tiny: TinySet, tmp_path: Path) -> None:
    loaded = load_state(EfficientAD(**TRAINED), fitted.save(tmp_path / "efficientad.safetensors"))
    assert np.array_equal(loaded.predict(tiny.test).maps, fitted.predict(tiny.test).maps)
    assert torch.equal(loaded.map_quantiles_, fitted.map_quantiles_)
    assert loaded.loss_history_ == fitted.loss_history_


def test_seeded_and_checkpoints_do_not_change_training(tiny: TinySet, tmp_path: Path) -> None:
    a = EfficientAD(**QUICK).fit(tiny.train)
    b = EfficientAD(**QUICK).fit(tiny.train)
    c = EfficientAD(**QUICK, checkpoint_dir=str(tmp_path), checkpoint_every=2).fit(tiny.train)
    assert a.loss_history_ == b.loss_history_ == c.loss_history_
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "efficientad-student.safetensors",
        "efficientad-teacher.safetensors",
    ]
    assert np.array_equal(a.predict(tiny.test[:2]).maps, c.predict(tiny.test[:2]).maps)
    # A second fit on the same folder resumes both phases from their step-2 checkpoints and ends the same.
    d = EfficientAD(**QUICK, checkpoint_dir=str(tmp_path), checkpoint_every=2).fit(tiny.train)
    assert [r.resumed_from_step for r in d.training_reports_] == [2, 2]
    assert d.loss_history_ == a.loss_history_
    assert np.array_equal(a.predict(tiny.test[:2]).maps, d.predict(tiny.test[:2]).maps)


def test_medium_trains_and_predicts(tiny: TinySet) -> None:
    crop = np.ascontiguousarray(tiny.train[:3, :, :64, :80])  # 64 px is the smallest size; not square
    det = EfficientAD(**{**FAST, "batch_size": 1}, model_size="medium", teacher_steps=2, steps=2).fit(crop)
    assert det.student_[-1].out_channels == 32  # medium ends in a 1x1 conv; the student has 2x channels
    out = det.predict(np.ascontiguousarray(tiny.test[:2, :, :64, :80]))
    assert out.maps.shape == (2, 64, 80) and np.isfinite(out.maps).all()


def test_networks_share_an_aligned_quarter_resolution_grid() -> None:
    assert pdn_grid((256, 256)) == (64, 64) and pdn_grid((96, 100)) == (24, 25)
    for size in ((256, 256), (96, 100), (64, 64)):
        net = pdn("small", 4)
        assert tuple(net(torch.zeros(1, 3, *size)).shape[-2:]) == pdn_grid(size)
        assert Autoencoder(size, pdn_grid(size), 4)(torch.zeros(2, 3, *size)).shape == (2, 4, *pdn_grid(size))
    # With constant positive weights the output cell's receptive field is symmetric about its centre.
    net = pdn("small", 1)
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.constant_(m.weight, 0.01)
            torch.nn.init.constant_(m.bias, 0.1)
    x = torch.ones(1, 3, 96, 96, requires_grad=True)
    net(x)[0, 0, 10, 10].backward()
    g = x.grad[0].sum(0)
    rows = (g.sum(1) * torch.arange(96)).sum() / g.sum()
    assert abs(float(rows) - 41.0) < 1e-3  # cell i is centred on pixel 4i + 1


def test_quantile_helpers() -> None:
    v = torch.randn(1001, generator=torch.Generator().manual_seed(0))
    for q in (0.0, 0.5, 0.9, 0.995, 1.0):
        assert float(quantile(v, q)) == pytest.approx(float(np.quantile(v.numpy(), q)), abs=1e-6)
    d = torch.arange(1000.0)
    assert float(hard_mean(d, 0.99)) == pytest.approx(np.mean(np.arange(990, 1000)))


def test_bad_input(fitted: EfficientAD, tiny: TinySet) -> None:
    with pytest.raises(ValueError, match="model_size"):
        EfficientADConfig(model_size="large")
    with pytest.raises(ValueError, match="model_size"):
        EfficientAD(model_size="large")
    with pytest.raises(ValueError, match="validation_share"):
        EfficientAD(validation_share=1.0)
    with pytest.raises(ValueError, match="hard_quantile"):
        EfficientAD(hard_quantile=0.0)
    with pytest.raises(ValueError, match="at least 64x64"):
        EfficientAD(**QUICK).fit(tiny.train[:, :, :32, :32])
    with pytest.raises(ValueError, match="at least two good images"):
        EfficientAD(**QUICK).fit(tiny.train[:1])
    with pytest.raises(ValueError, match="teacher_layers"):
        EfficientAD(**QUICK, teacher_layers="layer2+layer9").fit(tiny.train[:2])
    with pytest.raises(RuntimeError, match="not fitted"):
        EfficientAD(**QUICK).predict(tiny.test)
    with pytest.raises(ValueError, match="resize"):
        fitted.predict(tiny.test[:, :, :64, :64])
