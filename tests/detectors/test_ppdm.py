from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from detectors import DETECTORS, load_detector
from detectors.base import DetectorOutput
from detectors.errors import InputError
from detectors.ppdm import PPDM, PPDMConfig, VectorQuantiser, smoothness, warp
from tests.conftest import TinySet

# Narrow networks and a short schedule: enough for the synthetic test defects on a CPU.
FAST = {
    "epochs": 3,
    "batch_size": 4,
    "offset_width": 8,
    "reduce_channels": 16,
    "bottleneck_channels": 64,
    "bottleneck_blocks": 1,
    "codebook_size": 20,
}
RUN = {"device": "cpu", "progress": False}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def fitted(tiny: TinySet, one_torch_thread: None) -> PPDM:
    return PPDM(**FAST, **RUN).fit(tiny.train)


@pytest.fixture(scope="module")
def output(fitted: PPDM, tiny: TinySet) -> DetectorOutput:
    return fitted.predict(tiny.test)


def test_training_lowers_the_loss_and_finds_the_defects(fitted: PPDM, output: DetectorOutput, tiny: TinySet) -> None:
    curve = fitted.loss_history_["train"]
    steps = 3 * -(-len(tiny.train) // 4)  # 3 epochs of ceil(n / 4) batches
    assert len(curve) == steps and fitted.training_reports_[0].steps == steps
    assert np.mean(curve[-3:]) < 0.9 * np.mean(curve[:3])
    assert output.maps.shape == (len(tiny.test), 96, 96) and output.maps.dtype == np.float32
    assert np.isfinite(output.maps).all() and output.maps.min() >= 0
    assert output.scores.shape == (len(tiny.test),) and output.scores.dtype == np.float32
    assert np.allclose(output.scores, output.maps.reshape(len(output.maps), -1).max(1))
    assert roc_auc_score(tiny.labels, output.scores) >= 0.95


def test_the_map_adds_the_normalised_deformation(fitted: PPDM, output: DetectorOutput, tiny: TinySet) -> None:
    with torch.inference_mode():
        rec, deform = fitted._maps(torch.from_numpy(tiny.test))
    assert (fitted.scales_ > 0).all() and (deform >= 0).all()
    expected = rec / fitted.scales_[0] + fitted.config.deformation_weight * deform / fitted.scales_[1]
    assert np.allclose(output.maps, expected.numpy(), atol=1e-5)
    # The normalisers: each map's mean image maximum over the training images.
    with torch.inference_mode():
        rec_train, deform_train = fitted._maps(torch.from_numpy(tiny.train))
    assert torch.isclose(fitted.scales_[0], rec_train.flatten(1).max(1).values.mean(), rtol=1e-4)
    assert torch.isclose(fitted.scales_[1], deform_train.flatten(1).max(1).values.mean(), rtol=1e-4)
    # The decoder learnt to rebuild good images: their reconstruction error fell well below the untrained net's.
    untrained = PPDM(**FAST, **RUN)
    untrained._build()
    untrained._eval()
    with torch.inference_mode():
        rec_untrained, _ = untrained._maps(torch.from_numpy(tiny.train))
    assert rec_train.mean() < 0.8 * rec_untrained.mean()


def test_save_load_round_trip(fitted: PPDM, output: DetectorOutput, tiny: TinySet, tmp_path: Path) -> None:
    loaded = load_detector(fitted.save(tmp_path / "ppdm.safetensors"))
    assert isinstance(loaded, PPDM) and loaded.config == fitted.config
    again = loaded.predict(tiny.test)
    assert np.array_equal(again.maps, output.maps) and np.array_equal(again.scores, output.scores)
    assert loaded.training_reports_ == fitted.training_reports_


def test_seeded_and_resumable(tiny: TinySet, tmp_path: Path) -> None:
    short = {**FAST, **RUN, "epochs": 1, "batch_size": 3}  # 2 steps on 6 images
    train = tiny.train[:6]
    first = PPDM(**short).fit(train)
    a = first.loss_history_["train"]
    assert PPDM(**short).fit(train).loss_history_["train"] == a
    assert PPDM(**short, seed=1).fit(train).loss_history_["train"] != a
    # A checkpoint at step 1 is left behind; a second fit resumes from it and ends where one fit ends.
    ckpt = {**short, "checkpoint_dir": str(tmp_path), "checkpoint_every": 1}
    PPDM(**ckpt).fit(train)
    resumed = PPDM(**ckpt).fit(train)
    assert resumed.training_reports_[0].resumed_from_step == 1
    assert np.allclose(resumed.loss_history_["train"], a, rtol=1e-5)
    images = tiny.test[:3]
    assert np.allclose(resumed.predict(images).maps, first.predict(images).maps, atol=1e-5)


def test_deformation_parts() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 16, 24, generator=g)
    still = torch.zeros(2, 16, 24, 2)
    assert torch.allclose(warp(x, still), x, atol=1e-5)
    # One pixel to the right in grid units (2 / (W - 1)): each output pixel reads its right neighbour.
    shift = torch.zeros(2, 16, 24, 2)
    shift[..., 0] = 2 / 23
    assert torch.allclose(warp(x, shift)[..., :-1], x[..., 1:], atol=1e-5)
    assert smoothness(shift) < smoothness(torch.randn(2, 16, 24, 2, generator=g))
    assert smoothness(still) == 0


def test_the_quantiser_snaps_to_the_nearest_prototype() -> None:
    torch.manual_seed(0)
    vq = VectorQuantiser(4, 3, 0.25)
    with torch.no_grad():
        vq.codebook.copy_(torch.eye(4, 3) * 5)
    z = (torch.eye(4, 3) * 5 + 0.1)[[2, 0]].view(2, 3, 1, 1).requires_grad_(True)
    q, loss = vq(z)
    assert torch.allclose(q, (torch.eye(4, 3) * 5)[[2, 0]].view(2, 3, 1, 1))
    assert torch.isclose(loss, torch.tensor(1.25 * 0.01))
    q.sum().backward()  # straight through: the gradient reaches z unchanged
    assert torch.equal(z.grad, torch.ones_like(z))


def test_registry_and_bad_input(fitted: PPDM, tiny: TinySet) -> None:
    assert DETECTORS["ppdm"] is PPDM
    with pytest.raises(InputError, match="at least two good images"):
        PPDM(**FAST, **RUN).fit(tiny.train[:1])
    with pytest.raises(InputError, match="divisible by 32"):
        PPDM(**FAST, **RUN).fit(tiny.train[:, :, :80, :80])
    with pytest.raises(InputError, match="resize to the fitted size"):
        fitted.predict(tiny.test[:, :, :64, :64])
    with pytest.raises(InputError, match="batch_size >= 2"):
        PPDM(**{**FAST, "batch_size": 1}, **RUN).fit(tiny.train)
    with pytest.raises(InputError, match="coarse_shift"):
        PPDMConfig(coarse_shift=0.0)
    with pytest.raises(InputError, match="codebook_size"):
        PPDMConfig(codebook_size=0)
