from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from detectors import DETECTORS, PatchCore, PatchCoreConfig, load_detector, make_detector
from tests.conftest import TinySet

FAST = {"coreset_ratio": 0.1, "progress": False, "device": "cpu"}


@pytest.fixture(scope="module")
def fitted(tiny: TinySet) -> PatchCore:
    return make_detector("patchcore", **FAST).fit(tiny.train)


def peak_in_mask(maps: np.ndarray, masks: np.ndarray, tolerance_px: int = 4) -> np.ndarray:
    kernel = np.ones((2 * tolerance_px + 1,) * 2, np.uint8)
    return np.array(
        [cv2.dilate(k.astype(np.uint8), kernel).reshape(-1)[m.argmax()] > 0 for m, k in zip(maps, masks, strict=True)]
    )


def test_finds_the_planted_defects(fitted: PatchCore, tiny: TinySet) -> None:
    out = fitted.predict(tiny.test)
    assert out.maps.shape == (len(tiny.test), 96, 96) and out.maps.dtype == np.float32
    assert roc_auc_score(tiny.labels, out.scores) >= 0.95
    bad = tiny.labels == 1
    assert peak_in_mask(out.maps[bad], tiny.masks[bad]).all()


def test_memory_bank_is_the_coreset(fitted: PatchCore) -> None:
    n_patches = 12 * (96 // 8) ** 2
    assert fitted.memory_bank_.shape == (int(np.ceil(0.1 * n_patches)), 40 + 112)
    assert fitted.image_size_ == (96, 96)


def test_the_default_backbone_s_coreset_runs_on_exact_distances(fitted: PatchCore, tiny: TinySet) -> None:
    """Lite0's 152 channels are not projected (a 128-d projection cost textures 0.5-0.7 AUROC points, #14)."""
    from detectors.coreset import greedy_coreset

    patches = torch.cat([fitted._embed(torch.from_numpy(im[None])).flatten(0, 2) for im in tiny.train])
    exact = patches[greedy_coreset(patches, 0.1, projection_dim=0, seed=0)]
    torch.testing.assert_close(fitted.memory_bank_, exact, rtol=0, atol=1e-5)


def test_save_load_gives_identical_maps(fitted: PatchCore, tiny: TinySet, tmp_path: Path) -> None:
    path = fitted.save(tmp_path / "pc.safetensors")
    again = load_detector(path)
    assert isinstance(again, PatchCore) and again.config == fitted.config
    a, b = fitted.predict(tiny.test), again.predict(tiny.test)
    assert np.array_equal(a.maps, b.maps) and np.array_equal(a.scores, b.scores)


def test_reweighting_and_half_bank(tiny: TinySet, fitted: PatchCore) -> None:
    plain = fitted.predict(tiny.test).scores
    reweighted = make_detector("patchcore", **FAST, reweight=True).fit(tiny.train).predict(tiny.test).scores
    assert not np.allclose(plain, reweighted)
    assert np.all(reweighted <= plain + 1e-6)  # the weight is in (0, 1)
    assert roc_auc_score(tiny.labels, reweighted) >= 0.95
    half = make_detector("patchcore", **FAST, half_bank=True).fit(tiny.train)
    assert half.memory_bank_.dtype == torch.float16
    assert np.allclose(half.predict(tiny.test).scores, plain, rtol=1e-2)


def test_bad_input_is_a_clear_error(tiny: TinySet, fitted: PatchCore) -> None:
    with pytest.raises(ValueError, match="empty"):
        PatchCore(PatchCoreConfig(**FAST)).fit(tiny.train[:0])
    with pytest.raises(ValueError, match="mixed sizes"):
        PatchCore(PatchCoreConfig(**FAST)).fit([tiny.train[0], tiny.train[1, :, :64, :64]])
    nan = tiny.train[:2].copy()
    nan[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        PatchCore(PatchCoreConfig(**FAST)).fit(nan)
    with pytest.raises(RuntimeError, match="not fitted"):
        PatchCore().predict(tiny.test)
    with pytest.raises(ValueError, match="fitted on"):
        fitted.predict(tiny.test[:, :, :64, :64])
    with pytest.raises(ValueError, match=re.escape(f"available: {', '.join(sorted(DETECTORS))}")):
        make_detector("patchkore")
    with pytest.raises(ValueError, match="no option"):
        make_detector("patchcore", coreset=0.1)


@pytest.mark.parametrize("category", ["brick", "gravel"])
def test_textures_are_found_and_borders_of_good_images_are_not_flagged(category: str, tmp_path) -> None:
    """On textures, patches at the image border used to be PatchCore's highest scores on good images
    (image AUROC 0.66 here) because the local average left them less smoothed than interior ones."""
    from segad.data import load_images
    from segad.data.textures import TextureSpec, load_textures
    from segad.metrics import image_auroc

    spec = TextureSpec(image_size=128, crop=128, n_train=60, n_test_good=20, n_defects_per_type=4)
    ds = load_textures(category, spec, cache_dir=tmp_path)
    train = load_images([s.image_path for s in ds.train_good], 128)
    test = load_images([s.image_path for s in ds.test], 128)
    out = make_detector("patchcore", device="cpu", progress=False).fit(train).predict(test)
    assert image_auroc([s.label for s in ds.test], out.scores) > 0.8
