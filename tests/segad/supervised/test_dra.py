"""DRA: the per-head losses, pseudo defects, a short CPU fit, batch-independent scores, persistence, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detectors.errors import InputError
from segad.supervised import DRA, DRAConfig
from segad.supervised.base import NotFittedError
from segad.supervised.dra import NORMAL, PSEUDO, SEEN, dra_loss, paste_patch

# CPU-sized: 3 epochs x 5 steps of 8 images, layer3 with ImageNet batch-norm statistics (see test_devnet).
SHORT = {"epochs": 3, "steps_per_epoch": 5, "batch_size": 8, "device": "cpu", "layer": "layer3", "freeze_bn": True}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def fitted(data) -> DRA:
    return DRA(**SHORT).fit(data.normal, data.defects)


def _loss(heads: torch.Tensor, labels: torch.Tensor) -> float:
    return float(dra_loss(heads, labels, margin=5.0, n_ref=5000, generator=torch.Generator().manual_seed(0)))


def test_each_head_is_judged_on_its_own_rows() -> None:
    labels = torch.tensor([NORMAL, SEEN, PSEUDO])
    heads = torch.tensor([[6.0, 0.0, 0.0, 0.0], [0.0, 6.0, 3.0, 6.0], [0.0, 2.0, 6.0, 6.0]])
    base = _loss(heads, labels)
    # The seen head never sees pseudo defects, the pseudo head never sees seen ones.
    for row, col in ((PSEUDO, 1), (SEEN, 2)):
        moved = heads.clone()
        moved[row, col] += 4.0
        assert _loss(moved, labels) == pytest.approx(base)
    # The normal head must score normal images high: lowering it on the normal image costs.
    low = heads.clone()
    low[0, 0] = 0.0
    assert _loss(low, labels) > base + 1.0
    # The residual head scores every defect, seen or pseudo.
    weak = heads.clone()
    weak[2, 3] = 0.0
    assert _loss(weak, labels) > base + 1.0


def test_pseudo_defects_copy_a_patch_of_the_same_image() -> None:
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).reshape(2, 3, 32, 32)
    out = paste_patch(x, torch.Generator().manual_seed(3))
    again = paste_patch(x, torch.Generator().manual_seed(3))
    assert torch.equal(out, again)
    for i in range(2):
        changed = (out[i] != x[i]).any(dim=0)
        assert 0 < changed.sum() < 0.2 * 32 * 32  # a patch, not the image
        assert set(out[i].flatten().tolist()) <= set(x[i].flatten().tolist())  # pixels of that same image


def test_a_short_fit_learns_to_rank_defects_above_good_images(fitted: DRA, data) -> None:
    losses = fitted.losses_
    assert len(losses) == 15 and np.mean(losses[-5:]) < np.mean(losses[:5])
    good, bad = fitted.decision_function(data.test_good), fitted.decision_function(data.test_defects)
    assert bad.min() > good.max()
    assert fitted.patch_scores(data.test_good).shape == (4, 6, 6)


def test_a_score_depends_on_its_image_alone(fitted: DRA, data) -> None:
    together = fitted.decision_function(np.concatenate([data.test_good, data.test_defects]))
    alone = np.concatenate([fitted.decision_function(x[None]) for x in data.test_good])
    np.testing.assert_allclose(together[:4], alone, rtol=1e-5, atol=1e-5)


def test_seeded_fits_repeat_and_save_load_scores_the_same(fitted: DRA, data, tmp_path) -> None:
    again = DRA(**SHORT).fit(data.normal, data.defects)
    assert again.losses_ == fitted.losses_
    path = fitted.save(tmp_path / "dra.safetensors")
    loaded = DRA.load(path, device="cpu")
    test = data.test_defects
    assert np.array_equal(loaded.decision_function(test), fitted.decision_function(test))
    assert loaded.config == fitted.config and loaded.losses_ == fitted.losses_
    # The residual head's reference normals are fixed at the end of the fit and travel with the weights.
    for s in range(fitted.config.n_scales):
        ref = getattr(fitted.model_, f"reference_{s}")
        assert ref.abs().sum() > 0 and torch.equal(ref, getattr(loaded.model_, f"reference_{s}"))


def test_bad_input_errors(fitted: DRA, data, tmp_path) -> None:
    with pytest.raises(NotFittedError, match="DRA is not fitted"):
        DRA(**SHORT).decision_function(data.test_good)
    with pytest.raises(InputError, match="labelled defect"):
        DRA(**SHORT).fit(data.normal, data.defects[:0])
    with pytest.raises(InputError, match=r"DRAConfig\.pseudo_share must be in"):
        DRAConfig(pseudo_share=1.0)
    with pytest.raises(InputError, match=r"DRAConfig\.n_reference must be at least 1"):
        DRAConfig(n_reference=0)
    with pytest.raises(InputError, match="resize them to the fitted size"):
        fitted.decision_function(data.test_good[:, :, :64, :64])
    devnet_file = tmp_path / "x.safetensors"
    from segad.supervised import DevNet

    DevNet(epochs=1, steps_per_epoch=1, batch_size=4, device="cpu", layer="layer3").fit(
        data.normal[:4], data.defects[:2]
    ).save(devnet_file)
    with pytest.raises(InputError, match="is not a DRA file"):
        DRA.load(devnet_file)
