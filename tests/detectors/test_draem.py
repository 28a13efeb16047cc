from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from detectors.base import load_state
from detectors.draem import Draem, DraemConfig, focal_loss, ssim, synthesise
from tests.conftest import TinySet

# Tiny networks and a short schedule: enough for the synthetic test defects on a CPU.
FAST = {"steps": 60, "base_width": 8, "disc_width": 8, "batch_size": 4, "learning_rate": 2e-3}
RUN = {"device": "cpu", "progress": False}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def fitted(tiny: TinySet, one_torch_thread) -> Draem:
    return Draem(DraemConfig(**FAST, **RUN)).fit(tiny.train)


def test_training_lowers_the_loss_and_finds_the_defects(fitted: Draem, tiny: TinySet) -> None:
    curve = fitted.loss_history_["train"]
    assert len(curve) == FAST["steps"]
    assert np.mean(curve[-10:]) < 0.5 * np.mean(curve[:10])
    (report,) = fitted.training_reports_
    assert report.steps == FAST["steps"] and report.seconds > 0
    out = fitted.predict(tiny.test)
    assert out.maps.shape == (len(tiny.test), 96, 96) and out.maps.dtype == np.float32
    assert np.isfinite(out.maps).all() and out.maps.min() >= 0 and out.maps.max() <= 1
    assert out.scores.shape == (len(tiny.test),) and out.scores.dtype == np.float32
    assert roc_auc_score(tiny.labels, out.scores) >= 0.8


def test_score_is_the_max_of_the_smoothed_map(fitted: Draem, tiny: TinySet) -> None:
    out = fitted.predict(tiny.test)
    k = fitted.config.smooth_kernel
    pooled = F.avg_pool2d(torch.from_numpy(out.maps)[:, None], k, 1, k // 2, count_include_pad=False)
    assert np.allclose(out.scores, pooled.flatten(1).max(1).values.numpy(), atol=1e-6)
    assert (out.scores <= out.maps.reshape(len(out.maps), -1).max(1) + 1e-6).all()


def test_save_load_round_trip(fitted: Draem, tiny: TinySet, tmp_path: Path) -> None:
    path = fitted.save(tmp_path / "draem.safetensors")
    loaded = load_state(Draem(DraemConfig(**FAST, **RUN)), path)
    a, b = loaded.predict(tiny.test), fitted.predict(tiny.test)
    assert np.array_equal(a.maps, b.maps) and np.array_equal(a.scores, b.scores)
    assert loaded.loss_history_ == fitted.loss_history_ and loaded.training_reports_ == fitted.training_reports_


def test_seeded_and_resumable(tiny: TinySet, tmp_path: Path) -> None:
    short = {**FAST, **RUN, "steps": 6}
    crops = np.ascontiguousarray(tiny.train[:, :, :64, :64])  # repeatability needs no full-size images
    a = Draem(**short).fit(crops).loss_history_["train"]
    assert Draem(**short).fit(crops).loss_history_["train"] == a
    assert Draem(**short, seed=1).fit(crops).loss_history_["train"] != a
    # A checkpoint at step 3 is left behind; a second fit resumes from it and ends on the same curve.
    ckpt = {**short, "checkpoint_dir": str(tmp_path), "checkpoint_every": 3}
    Draem(**ckpt).fit(crops)
    resumed = Draem(**ckpt).fit(crops)
    assert resumed.training_reports_[0].resumed_from_step == 3
    assert np.allclose(resumed.loss_history_["train"], a, rtol=1e-5)


def test_synthesised_anomalies_stay_under_their_masks(tiny: TinySet) -> None:
    rng = np.random.default_rng(0)
    pool = rng.uniform(0, 1, (3, 32, 32, 3)).astype(np.float32)
    out, masks = synthesise(pool, np.arange(3), pool, 1.0, rng)
    assert masks.any(axis=(1, 2)).all()
    assert np.array_equal(out[~masks], pool[~masks]) and not np.allclose(out[masks], pool[masks])
    none, no_masks = synthesise(pool, np.arange(3), pool, 0.0, rng)
    assert np.array_equal(none, pool) and not no_masks.any()


def test_losses() -> None:
    a = torch.rand(2, 3, 32, 32)
    assert torch.isclose(ssim(a, a), torch.tensor(1.0))
    assert ssim(a, torch.rand(2, 3, 32, 32)) < 0.2
    b = (a + 0.05 * torch.randn_like(a)).clamp(0, 1)
    full = ssim(a, b)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the training loop's autocast must not reach SSIM
        assert ssim(a, b).dtype == torch.float32 and ssim(a, b) == full
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    confident = torch.stack([torch.full((1, 4, 4), 10.0), torch.zeros(1, 4, 4)], dim=1)
    assert focal_loss(confident, target, 2.0) < 1e-6 < focal_loss(-confident, target, 2.0)


def test_bad_input(fitted: Draem, tiny: TinySet) -> None:
    with pytest.raises(ValueError, match="at least two good images"):
        Draem(**FAST, **RUN).fit(tiny.train[:1])
    with pytest.raises(ValueError, match="divisible by 16"):
        Draem(**FAST, **RUN).fit(tiny.train[:, :, :90, :90])
    with pytest.raises(ValueError, match="resize to the fitted size"):
        fitted.predict(tiny.test[:, :, :64, :64])
    with pytest.raises(ValueError, match="smooth_kernel"):
        DraemConfig(smooth_kernel=20)
    with pytest.raises(ValueError, match="batch_size >= 2"):
        Draem(**{**FAST, "batch_size": 1}, **RUN).fit(tiny.train)
