from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from detectors import DETECTORS, load_detector, make_detector
from detectors.errors import InputError
from detectors.riad import RIAD, grid_masks, inpaint, msgms_map
from tests.conftest import TinySet

# A narrow U-Net at a 48-px working size and a 16-step schedule; the paper's 256 px, 64 channels and
# 300 epochs at batch 8 are the defaults.
FAST = {
    "progress": False,
    "device": "cpu",
    "image_size": 48,
    "width": 8,
    "batch_size": 6,
    "learning_rate": 3e-3,
    "mean_filter": 9,
}


@pytest.fixture(scope="module")
def fitted(tiny: TinySet, one_torch_thread) -> RIAD:
    return make_detector("riad", **FAST, epochs=8).fit(tiny.train)


def test_riad_learns_to_inpaint_and_finds_planted_defects(fitted: RIAD, tiny: TinySet) -> None:
    curve = fitted.loss_history_["train"]
    assert len(curve) == 16 and np.mean(curve[-3:]) < 0.6 * np.mean(curve[:3])
    out = fitted.predict(tiny.test)
    assert out.maps.shape == (len(tiny.test), 96, 96) and np.isfinite(out.maps).all()
    assert np.allclose(out.scores, out.maps.reshape(len(out.maps), -1).max(1))
    # 16 steps leave the reconstruction rough: the missing parts score clearly above every good image,
    # the small contamination blobs less so (0.92 image AUROC, 0.92 pixel AUROC when measured).
    assert roc_auc_score(tiny.labels, out.scores) >= 0.8
    assert roc_auc_score(tiny.masks.ravel() > 0, out.maps.ravel()) >= 0.85


def test_seeded_training_and_save_load(fitted: RIAD, tiny: TinySet, tmp_path: Path) -> None:
    again = make_detector("riad", **FAST, epochs=1).fit(tiny.train)  # the same first steps, as seeded
    assert np.allclose(again.loss_history_["train"], fitted.loss_history_["train"][:2])
    loaded = load_detector(fitted.save(tmp_path / "riad.safetensors"))
    a, b = loaded.predict(tiny.test[:3]), fitted.predict(tiny.test[:3])
    assert np.array_equal(a.maps, b.maps) and np.array_equal(a.scores, b.scores)
    assert loaded.loss_history_ == fitted.loss_history_


@pytest.mark.parametrize(("size", "cell", "n"), [(48, 2, 3), (48, 16, 3), (32, 8, 4), (64, 4, 2)])
def test_the_masks_partition_the_grid(size: int, cell: int, n: int) -> None:
    masks = grid_masks(size, cell, n, torch.Generator().manual_seed(0))
    assert masks.shape == (n, size, size) and masks.dtype == torch.bool
    assert (masks.sum(0) == 1).all()  # every pixel hidden by exactly one mask
    cells = masks[:, ::cell, ::cell]  # one pixel per cell; each cell is hidden whole
    assert torch.equal(masks, cells.repeat_interleave(cell, 1).repeat_interleave(cell, 2))
    per_mask = cells.flatten(1).sum(1)
    assert per_mask.max() - per_mask.min() <= 1  # the cells are shared out evenly


def test_inpainting_takes_each_cell_from_the_pass_that_hid_it() -> None:
    masks = grid_masks(16, 4, 3, torch.Generator().manual_seed(1))
    x = torch.rand(2, 3, 16, 16)
    seen = []

    def net(inputs: torch.Tensor) -> torch.Tensor:  # records what it sees, answers with the pass number
        seen.append(inputs)
        return torch.arange(3).repeat_interleave(2).view(6, 1, 1, 1).float().expand_as(inputs)

    rec = inpaint(net, x, masks)
    (inputs,) = seen
    hidden = masks.repeat_interleave(2, 0)[:, None].expand_as(inputs)
    assert (inputs[hidden] == 0).all() and torch.equal(inputs[~hidden], x.repeat(3, 1, 1, 1)[~hidden])
    assert torch.equal(rec, masks.float().argmax(0).float()[None, None].expand_as(rec))


def test_msgms_is_one_for_equal_images_and_lower_for_different() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=g)
    assert torch.allclose(msgms_map(x, x), torch.ones(2, 32, 32), atol=1e-5)
    slight = (x + 0.02 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    other = torch.rand(x.shape, generator=g)
    assert msgms_map(x, other).mean() < msgms_map(x, slight).mean() - 0.1
    flat = torch.full_like(x, 0.5)  # no gradients: dissimilar to a textured image
    assert msgms_map(x, flat).mean() < 0.5


def test_registry_and_bad_input(tiny: TinySet) -> None:
    assert DETECTORS["riad"] is RIAD
    with pytest.raises(InputError, match="at least two good images"):
        make_detector("riad", **FAST, epochs=1).fit(tiny.train[:1])
    with pytest.raises(InputError, match="image_size must be a multiple of 16"):
        make_detector("riad", **{**FAST, "image_size": 40}, epochs=1).fit(tiny.train)
    with pytest.raises(InputError, match="cell_sizes"):
        make_detector("riad", **{**FAST, "cell_sizes": "2+5"}, epochs=1).fit(tiny.train)
    for bad in ({"cell_sizes": "two"}, {"n_masks": 1}, {"mean_filter": 4}, {"epochs": 0}, {"width": 0}):
        with pytest.raises(InputError, match=next(iter(bad))):
            make_detector("riad", **{**FAST, **bad})
