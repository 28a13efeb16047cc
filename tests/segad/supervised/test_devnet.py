"""DevNet: the deviation loss, balanced batches, a short CPU fit, determinism, persistence and input errors."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from detectors.errors import InputError
from segad.supervised import DevNet, DevNetConfig, deviation_loss, devnet
from segad.supervised.base import draw as _draw
from segad.supervised.base import topk_mean
from tests.segad.supervised.conftest import Data

# CPU-sized schedule: 3 epochs x 5 steps of 8 images (the default is 50 x 20 of 48).
SHORT = {"epochs": 3, "steps_per_epoch": 5, "batch_size": 8, "device": "cpu"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def fitted(data: Data) -> DevNet:
    """The default network (Lite0, layer4, batch norm training) on the short schedule."""
    return DevNet(**SHORT).fit(data.normal, data.defects)


@pytest.fixture(scope="module")
def frozen_bn(data: Data) -> DevNet:
    """layer3 with frozen batch-norm statistics: eval-mode scores are what the loss trained.

    With trained statistics (the default), Lite0's batch norm (momentum 0.01) needs hundreds of steps
    before its running statistics match what training saw, so 15 steps say little about test scores.
    """
    return DevNet(layer="layer3", freeze_bn=True, **SHORT).fit(data.normal, data.defects)


# --- the deviation loss (pure) ------------------------------------------------------------------
def test_normal_at_zero_costs_the_reference_mean_deviation() -> None:
    ref = torch.randn(5000, generator=torch.Generator().manual_seed(0))
    loss = deviation_loss(torch.zeros(1), torch.zeros(1), ref)
    assert float(loss) == pytest.approx(abs(float(ref.mean() / ref.std())), rel=1e-6)
    assert float(loss) < 0.05  # |mean| / std of 5000 N(0, 1) draws is ~0.014


def test_a_defect_past_the_margin_costs_nothing_and_one_below_costs_the_gap() -> None:
    ref = torch.randn(5000, generator=torch.Generator().manual_seed(1))
    mu, sd = float(ref.mean()), float(ref.std())
    past = torch.tensor([mu + 5.0 * sd, mu + 7.0 * sd])
    assert float(deviation_loss(past, torch.ones(2), ref, margin=5.0)) == pytest.approx(0.0, abs=1e-6)
    below = torch.tensor([mu + 2.0 * sd])
    assert float(deviation_loss(below, torch.ones(1), ref, margin=5.0)) == pytest.approx(3.0, rel=1e-5)
    # a normal far out costs its deviation; the mean runs over the batch
    both = deviation_loss(torch.tensor([mu - 4.0 * sd, mu + 2.0 * sd]), torch.tensor([0.0, 1.0]), ref)
    assert float(both) == pytest.approx((4.0 + 3.0) / 2, rel=1e-5)


def test_the_reference_comes_from_the_generator() -> None:
    s, y = torch.tensor([0.3, 4.0]), torch.tensor([0.0, 1.0])
    a = deviation_loss(s, y, generator=torch.Generator().manual_seed(5))
    b = deviation_loss(s, y, generator=torch.Generator().manual_seed(5))
    c = deviation_loss(s, y, generator=torch.Generator().manual_seed(6))
    assert float(a) == float(b) != float(c)


def test_topk_mean_keeps_at_least_one_patch() -> None:
    maps = torch.arange(18.0).reshape(2, 3, 3)  # 9 patches, 10%: int(0.9) = 0 -> 1 patch, the max
    assert topk_mean(maps, 0.1).tolist() == [8.0, 17.0]
    assert topk_mean(maps, 1.0).tolist() == [4.0, 13.0]
    assert topk_mean(maps, 0.25).tolist() == [7.5, 16.5]  # int(2.25) = 2 patches


def test_balanced_draw_repeats_scarce_defects_evenly() -> None:
    gen = torch.Generator().manual_seed(0)
    idx = _draw(3, 8, gen)  # 3 defects fill half a batch of 16
    assert len(idx) == 8 and sorted(np.bincount(idx.numpy()).tolist()) == [2, 3, 3]  # not left to chance
    assert np.bincount(_draw(3, 30, gen).numpy()).tolist() == [10, 10, 10]
    many = _draw(20, 8, gen)
    assert len(set(many.tolist())) == 8  # distinct when there are enough


# --- training -----------------------------------------------------------------------------------
def test_each_step_draws_half_normal_half_defects(monkeypatch: pytest.MonkeyPatch, data: Data) -> None:
    seen: list[dict] = []

    def spy(scores: torch.Tensor, labels: torch.Tensor, ref=None, **kw) -> torch.Tensor:
        seen.append({"n": len(scores), "defects": float(labels.sum()), **kw})
        return deviation_loss(scores, labels, ref, **kw)

    monkeypatch.setattr(devnet, "deviation_loss", spy)
    clip = torch.nn.utils.clip_grad_norm_
    clipped: list[float] = []
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda p, n: clipped.append(n) or clip(p, n))
    DevNet(epochs=1, steps_per_epoch=2, batch_size=6, margin=4.0, n_ref=100, device="cpu").fit(
        data.normal,
        data.defects[:1],  # one defect: repeated to fill its half of the batch
    )
    assert [(c["n"], c["defects"], c["margin"], c["n_ref"]) for c in seen] == [(6, 3.0, 4.0, 100)] * 2
    assert all(isinstance(c["generator"], torch.Generator) for c in seen)
    assert clipped == [1.0, 1.0]  # the reference clips the gradient norm at 1 before every step


def test_the_loss_falls_and_the_report_is_filled(fitted: DevNet) -> None:
    losses = fitted.losses_
    assert len(losses) == 15 and all(np.isfinite(losses)) and min(losses) >= 0  # >= 0: a loss, not its negative
    assert losses[-1] < losses[0]
    report = fitted.report_
    assert report is not None and report.steps == 15 and report.first_loss == losses[0]
    assert fitted.image_size_ == (96, 96) and not fitted.model_.training


def test_same_seed_same_scores_other_seed_other_scores(data: Data, fitted: DevNet) -> None:
    images = np.concatenate([data.test_good, data.test_defects])
    torch.manual_seed(12345)  # another caller RNG state than ``fitted`` saw: the result must not depend on it
    rng_before = torch.get_rng_state()
    again = DevNet(**SHORT).fit(data.normal, data.defects)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the fit leaves the caller's RNG alone
    np.testing.assert_array_equal(again.decision_function(images), fitted.decision_function(images))
    assert again.losses_ == fitted.losses_
    other = DevNet(**SHORT, seed=1).fit(data.normal, data.defects)
    assert not np.allclose(other.decision_function(images), fitted.decision_function(images), atol=1e-3)


def test_defects_score_higher_than_good_images_after_a_short_fit(data: Data, frozen_bn: DevNet) -> None:
    # The labelled defects are pushed towards the margin (5) and the normals towards 0: seeds 0-3 leave
    # a gap of 3.8-4.7 between their means; without the push (a defect term of the wrong sign) 0.5-1.2.
    normal, labelled = frozen_bn.decision_function(data.normal), frozen_bn.decision_function(data.defects)
    assert labelled.mean() > normal.mean() + 2.0, (normal, labelled)
    # Held-out images generalise less after 15 steps: a gap of 1.5-2.7 for seeds 0-3, so 0.5 is lenient.
    good, bad = frozen_bn.decision_function(data.test_good), frozen_bn.decision_function(data.test_defects)
    assert bad.mean() > good.mean() + 0.5, (good, bad)


def test_scores_are_pure_and_the_image_score_is_the_top_patch_mean(data: Data, frozen_bn: DevNet) -> None:
    scores = frozen_bn.decision_function(data.test_defects)
    assert scores.dtype == np.float32 and scores.shape == (4,)
    np.testing.assert_array_equal(frozen_bn.decision_function(data.test_defects), scores)
    maps = frozen_bn.patch_scores(data.test_defects)
    assert maps.dtype == np.float32 and maps.shape == (4, 6, 6)  # layer3: stride 16
    assert (maps >= 0).all()  # absolute values, as the reference's top-k takes them
    np.testing.assert_allclose(topk_mean(torch.from_numpy(maps), 0.1).numpy(), scores, rtol=1e-5)
    # scoring one image at a time gives what one batch gives
    one_by_one = np.concatenate([frozen_bn.decision_function(x[None]) for x in data.test_defects])
    np.testing.assert_allclose(one_by_one, scores, rtol=1e-5)


def test_two_scales_fit_and_score(data: Data) -> None:
    model = DevNet(n_scales=2, epochs=1, steps_per_epoch=1, batch_size=4, device="cpu")
    scores = model.fit(data.normal[:4], data.defects[:1]).decision_function(data.test_good)
    assert scores.shape == (4,) and np.isfinite(scores).all()
    assert model.patch_scores(data.test_good).shape == (4, 3, 3)


# --- persistence --------------------------------------------------------------------------------
def test_save_load_gives_identical_scores(tmp_path: Path, data: Data, frozen_bn: DevNet) -> None:
    path = frozen_bn.save(tmp_path / "devnet.safetensors")
    loaded = DevNet.load(path, device="cpu")
    images = np.concatenate([data.test_good, data.test_defects])
    np.testing.assert_array_equal(loaded.decision_function(images), frozen_bn.decision_function(images))
    assert loaded.config == frozen_bn.config and loaded.image_size_ == frozen_bn.image_size_
    assert loaded.losses_ == frozen_bn.losses_ and loaded.report_ == frozen_bn.report_
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically, nothing left behind


def test_load_rejects_truncated_foreign_and_missing_files(tmp_path: Path, frozen_bn: DevNet) -> None:
    blob = frozen_bn.save(tmp_path / "devnet.safetensors").read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(InputError, match=re.escape(str(cut))):
        DevNet.load(cut)
    foreign = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign), metadata={"detector": "patchcore"})
    with pytest.raises(InputError, match="not a DevNet file"):
        DevNet.load(foreign)
    with pytest.raises(InputError, match="does not exist"):
        DevNet.load(tmp_path / "nowhere.safetensors")


# --- bad input ----------------------------------------------------------------------------------
def _fit(normal: Callable[[Data], object], defects: Callable[[Data], object]) -> Callable[[Data], object]:
    return lambda d: DevNet(**SHORT).fit(normal(d), defects(d))


def _nan(x: np.ndarray) -> np.ndarray:
    x = x.copy()
    x[0, 0, 0, 0] = np.nan
    return x


BAD_INPUT = {
    "no defects": (_fit(lambda d: d.normal, lambda d: d.defects[:0]), "at least one labelled defect"),
    "defects None": (_fit(lambda d: d.normal, lambda d: None), "at least one labelled defect"),
    "no normal images": (_fit(lambda d: d.normal[:0], lambda d: d.defects), "normal: the batch is empty"),
    "normal without a channel axis": (
        _fit(lambda d: d.normal[:, 0], lambda d: d.defects),
        r"normal must be an \(N, 3, H, W\) batch",
    ),
    "one-channel defects": (
        _fit(lambda d: d.normal, lambda d: d.defects[:, :1]),
        r"defects must be an \(N, 3, H, W\) batch",
    ),
    "NaN defects": (_fit(lambda d: d.normal, lambda d: _nan(d.defects)), "defects contain NaN"),
    "mismatched sizes": (
        _fit(lambda d: d.normal, lambda d: d.defects[..., :64, :64]),
        "normal images are 96x96 px but defects are 64x64 px",
    ),
    "images too small": (
        _fit(lambda d: d.normal[..., :16, :16], lambda d: d.defects[..., :16, :16]),
        "at least 32 px",
    ),
    "topk_ratio 0": (lambda d: DevNet(topk_ratio=0.0), r"topk_ratio must be in \(0, 1\]"),
    "topk_ratio above 1": (lambda d: DevNetConfig(topk_ratio=1.5), r"topk_ratio must be in \(0, 1\]"),
    "batch of one": (lambda d: DevNet(batch_size=1), "batch_size must be at least 2"),
    "unknown layer": (lambda d: DevNet(layer="layer9"), "layer must be one of"),
    "unknown backbone": (lambda d: DevNet(backbone="vgg99"), "unknown backbone 'vgg99'"),
    "unknown option": (lambda d: DevNet(topk=0.1), r"no option\(s\) \['topk'\]"),
    "scoring before fit": (lambda d: DevNet(**SHORT).decision_function(d.test_good), "not fitted"),
    "saving before fit": (lambda d: DevNet(**SHORT).save("x.safetensors"), "not fitted"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT), ids=list(BAD_INPUT))
def test_bad_input_is_an_input_error_that_says_what_to_do(case: str, data: Data) -> None:
    make, message = BAD_INPUT[case]
    with pytest.raises(InputError, match=message):
        make(data)


def test_images_of_another_size_than_fitted(data: Data, frozen_bn: DevNet) -> None:
    with pytest.raises(InputError, match="fitted on 96x96 px; resize"):
        frozen_bn.patch_scores(data.test_good[..., :64, :64])
    with pytest.raises(InputError, match=r"images must be an \(N, 3, H, W\) batch"):
        frozen_bn.decision_function(data.test_good[0])
