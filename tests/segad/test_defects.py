from __future__ import annotations

import numpy as np
import pytest

from segad.data.synthetic import SyntheticSpec, render
from segad.defects import DEFECT_KINDS, GENERATORS, generate_defects, perlin_noise


@pytest.fixture(scope="module")
def goods():
    items = [render(SyntheticSpec(image_size=96, seed=2), i) for i in range(4)]
    return [it.image.astype(np.float32) / 255 for it in items], [it.components.astype(np.int32) for it in items]


@pytest.mark.parametrize("kind", DEFECT_KINDS)
def test_each_kind_changes_pixels_only_under_its_mask(kind: str, goods) -> None:
    images, segments = goods
    d = GENERATORS[kind](images[0], segments[0], np.random.default_rng(1), texture=images[1])
    assert d.image.shape == images[0].shape and d.image.dtype == np.float32 and d.mask.any()
    assert np.array_equal(d.image[~d.mask], images[0][~d.mask])  # nothing outside the mask moves
    assert d.image.min() >= 0.0 and d.image.max() <= 1.0


def test_generation_is_seeded_and_cycles_kinds(goods) -> None:
    images, segments = goods
    a = generate_defects(images, segments, 12, seed=3)
    b = generate_defects(images, segments, 12, seed=3)
    assert [d.kind for d in a] == list(DEFECT_KINDS) * 2
    assert all(np.array_equal(x.image, y.image) and x.source == y.source for x, y in zip(a, b, strict=True))
    assert not all(
        np.array_equal(x.image, y.image) for x, y in zip(a, generate_defects(images, segments, 12, 4), strict=True)
    )
    with pytest.raises(ValueError, match="unknown defect kinds"):
        generate_defects(images, segments, 2, 0, kinds=("crack",))


def test_perlin_noise_is_smooth_and_bounded() -> None:
    noise = perlin_noise((64, 64), (4, 4), np.random.default_rng(0))
    assert np.abs(noise).max() <= 1.5 and noise.std() > 0.1
    assert np.abs(np.diff(noise, axis=1)).max() < 0.3  # neighbours agree: gradient noise, not white noise
