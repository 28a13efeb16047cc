from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from segad.data import DatasetError, ImageReadError, load_image, load_images, load_mask, read_rgb
from segad.data.images import adjust_intensity


def _write(path: Path, arr: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), arr)
    return path


def test_grey_rgb_rgba_and_16_bit_read_alike(tmp_path: Path) -> None:
    grey8 = _write(tmp_path / "g8.png", np.full((10, 12), 51, np.uint8))
    grey16 = _write(tmp_path / "g16.png", np.full((10, 12), 13107, np.uint16))
    bgr = np.zeros((10, 12, 3), np.uint8)
    bgr[..., 2] = 255  # pure red in OpenCV's BGR order
    rgb = _write(tmp_path / "rgb.png", bgr)
    rgba = _write(tmp_path / "rgba.png", np.dstack([bgr, np.full((10, 12), 255, np.uint8)]))
    for p in (grey8, grey16):
        img = read_rgb(p)
        assert img.shape == (10, 12, 3) and np.allclose(img, 0.2, atol=1e-4)
    for p in (rgb, rgba):
        assert np.allclose(read_rgb(p)[0, 0], [1.0, 0.0, 0.0])


def test_resize_and_imagenet_normalisation(tmp_path: Path) -> None:
    p = _write(tmp_path / "a.png", np.full((30, 50, 3), 255, np.uint8))
    x = load_image(p, (16, 24))
    assert x.shape == (3, 16, 24)
    assert np.allclose(x[:, 0, 0], (1 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]), atol=1e-5)
    batch = load_images([p, _write(tmp_path / "b.png", np.zeros((8, 8), np.uint8))], 32)
    assert batch.shape == (2, 3, 32, 32)


def test_unreadable_and_missing_files_are_named(tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(ImageReadError, match=r"broken\.png is not a readable image"):
        read_rgb(broken)
    with pytest.raises(ImageReadError, match=r"gone\.png does not exist"):
        load_image(tmp_path / "gone.png", 8)


def test_mask_is_boolean_at_the_requested_size(tmp_path: Path) -> None:
    m = np.zeros((20, 20), np.uint8)
    m[5:10, 5:10] = 255
    path = _write(tmp_path / "m.png", m)
    same = load_mask(path, 20)
    assert same.dtype == bool and np.array_equal(same, m > 0)
    half = load_mask(path, 10)
    assert half.shape == (10, 10) and half[3:5, 3:5].all() and half.sum() == 4  # nearest: no blended labels
    assert not load_mask(None, 10).any()


def _gradient_cell(gain: float) -> np.ndarray:
    """A grey cell with a dark line, at some overall brightness: what exposure changes between shots."""
    rng = np.random.default_rng(0)
    base = 0.4 + 0.2 * rng.random((64, 64)).astype(np.float32)
    base[30:33, :] = 0.1
    return np.repeat(np.clip(base * gain, 0, 1)[:, :, None], 3, axis=2)


@pytest.mark.parametrize("mode", ["standardise", "clahe"])
def test_intensity_adjustment_removes_an_exposure_change(mode: str) -> None:
    dim, bright = _gradient_cell(0.6), _gradient_cell(1.4)
    assert np.abs(dim - bright).mean() > 0.15
    a, b = adjust_intensity(dim, mode), adjust_intensity(bright, mode)
    assert a.shape == dim.shape and a.dtype == np.float32 and a.min() >= 0.0 and a.max() <= 1.0
    # standardise removes the change; clahe's clip limit keeps part of the global level on purpose
    assert np.abs(a - b).mean() < (0.03 if mode == "standardise" else 0.5 * np.abs(dim - bright).mean())
    assert a[31].mean() < a[10].mean() - 0.1  # the dark line survives
    if mode == "standardise":
        assert a.mean() == pytest.approx(0.5, abs=0.01)
        assert a[..., 0].std() == pytest.approx(0.15, abs=0.02)  # a little less where it clips


def test_intensity_none_is_the_identity_and_a_bad_mode_is_named() -> None:
    img = _gradient_cell(1.0)
    assert adjust_intensity(img, "none") is img
    with pytest.raises(ValueError, match="--intensity must be one of none, standardise, clahe"):
        adjust_intensity(img, "hist")  # type: ignore[arg-type]


def test_load_image_applies_the_intensity_after_resizing(tmp_path: Path) -> None:
    p = _write(tmp_path / "cell.png", (_gradient_cell(0.6)[..., 0] * 255).astype(np.uint8))
    plain, std = load_image(p, 32), load_image(p, 32, "standardise")
    assert plain.shape == std.shape == (3, 32, 32) and not np.allclose(plain, std)
    assert np.allclose(load_images([p], 32, "standardise")[0], std)


def test_a_mask_must_match_its_image_and_an_empty_one_is_noted(tmp_path: Path) -> None:
    image = _write(tmp_path / "img.png", np.zeros((20, 30), np.uint8))
    m = np.zeros((20, 30), np.uint8)
    m[5:10, 5:10] = 255
    assert load_mask(_write(tmp_path / "ok.png", m), 10, image).any()
    with pytest.raises(DatasetError, match=r"small\.png: the mask is 15x10 but its image .*img\.png is 30x20"):
        load_mask(_write(tmp_path / "small.png", m[::2, ::2]), 10, image)  # used to be resized silently
    with pytest.warns(RuntimeWarning, match=r"empty\.png: the mask of defect image .* is empty"):
        load_mask(_write(tmp_path / "empty.png", np.zeros_like(m)), 10, image)
