from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from segad.data import DEFECT_TYPES, GOOD, Split, load_dataset, load_mask, load_segments, load_synthetic
from segad.data.synthetic import _COLOURS, SyntheticSpec, generate, render
from tests.conftest import TINY


def test_same_seed_same_pixels_other_seed_other_pixels() -> None:
    a, b = generate(TINY), generate(TINY)
    assert all(np.array_equal(x.image, y.image) and np.array_equal(x.mask, y.mask) for x, y in zip(a, b, strict=True))
    c = generate(SyntheticSpec(**{**TINY.__dict__, "seed": TINY.seed + 1}))
    assert not np.array_equal(a[0].image, c[0].image)


@pytest.mark.parametrize("kind", DEFECT_TYPES)
def test_each_defect_has_a_mask_over_changed_pixels(kind: str) -> None:
    spec = SyntheticSpec(image_size=96, seed=3)
    item = render(spec, 0, kind)
    assert item.image.shape == (96, 96, 3) and item.image.dtype == np.uint8
    assert 0 < item.mask.sum() < 0.2 * item.mask.size
    # The defect changes what is under its mask: there the pixels depart from the nominal product's paint
    # (component colours, before texture, gain and noise) far more than elsewhere.
    error = np.abs(item.image.astype(float) - _COLOURS[item.components]).mean(axis=2)
    assert error[item.mask].mean() > error[~item.mask].mean() + 10
    assert set(np.unique(item.components)) == {0, 1, 2, 3, 4}


def test_good_images_have_empty_masks_and_all_components() -> None:
    item = render(TINY, 1, GOOD, Split.TRAIN)
    assert not item.mask.any()
    assert set(np.unique(item.components)) == {0, 1, 2, 3, 4}


def test_written_set_loads_back_with_masks_and_segments(tiny_mvtec: Path) -> None:
    ds = load_dataset(tiny_mvtec, "widget")
    bad = next(s for s in ds if s.defect_type == "contamination")
    mask = load_mask(bad.mask_path, TINY.image_size)
    assert mask.dtype == bool and mask.any()
    seg = load_segments(bad.segment_path, TINY.image_size)
    assert seg.dtype == np.int32 and set(np.unique(seg)) == {0, 1, 2, 3, 4}


def test_builtin_set_is_written_once_into_the_cache(tmp_path: Path) -> None:
    ds = load_synthetic(TINY, cache_dir=tmp_path)
    root = next(tmp_path.iterdir())
    stamp = (root / "widget" / "train" / "good" / "000.png").stat().st_mtime_ns
    again = load_synthetic(TINY, cache_dir=tmp_path)
    assert [s.image_path for s in ds] == [s.image_path for s in again]
    assert (root / "widget" / "train" / "good" / "000.png").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [root.name]  # no temporary folder left behind
