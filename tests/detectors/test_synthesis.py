from __future__ import annotations

import numpy as np
import pytest

from detectors.synthesis import MAX_BETA, draem_blend, draw_beta, jitter_texture, perlin_mask, perlin_noise


def test_perlin_mask_is_a_non_empty_seeded_bool_mask() -> None:
    masks = [perlin_mask((48, 80), np.random.default_rng(seed)) for seed in range(8)]
    for m in masks:
        assert m.dtype == bool and m.shape == (48, 80) and m.any() and not m.all()
    again = perlin_mask((48, 80), np.random.default_rng(3))
    assert np.array_equal(again, masks[3])
    assert not all(np.array_equal(masks[0], m) for m in masks[1:])


def test_perlin_noise_is_seeded() -> None:
    a = perlin_noise((32, 32), (2, 4), np.random.default_rng(5))
    assert np.array_equal(a, perlin_noise((32, 32), (2, 4), np.random.default_rng(5)))


def test_draem_blend_by_hand() -> None:
    image = np.full((2, 2, 3), 0.5, np.float32)
    texture = np.full((2, 2, 3), 1.0, np.float32)
    mask = np.array([[True, False], [False, False]])
    out = draem_blend(image, texture, mask, beta=0.25)
    # under the mask: (1 - 0.25) * 1.0 + 0.25 * 0.5 = 0.875; elsewhere the image itself
    assert np.allclose(out[0, 0], 0.875)
    assert np.array_equal(out[~mask], image[~mask])
    grey = draem_blend(np.zeros((2, 2)), np.ones((2, 2)), mask.astype(np.float32), beta=0.0)
    assert np.array_equal(grey, mask.astype(np.float64))
    with pytest.raises(ValueError, match="resize"):
        draem_blend(image, texture[:1], mask, 0.5)


def test_beta_range() -> None:
    rng = np.random.default_rng(0)
    betas = np.array([draw_beta(rng) for _ in range(200)])
    assert betas.min() >= 0 and betas.max() < MAX_BETA and betas.max() > 0.6


def test_jitter_texture_keeps_shape_range_and_greyness() -> None:
    rng = np.random.default_rng(0)
    colour = rng.uniform(0, 1, (20, 36, 3)).astype(np.float32)
    t = jitter_texture(colour, (20, 36), rng)
    assert t.shape == (20, 36, 3) and t.dtype == np.float32 and t.min() >= 0 and t.max() <= 1
    grey = np.repeat(rng.uniform(0, 1, (20, 36, 1)), 3, axis=2).astype(np.float32)
    g = jitter_texture(grey, (20, 36), rng)
    assert np.ptp(g, axis=-1).max() < 1e-6  # grey images get no colour a grey product never shows
