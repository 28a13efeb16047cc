from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from segad.data import GOOD, DatasetError, Split, load_dataset, load_mask, read_rgb
from segad.data.registry import BUILTIN_DATASETS
from segad.data.textures import (
    DEFAULT_STRENGTH,
    TEXTURE_CATEGORIES,
    TEXTURE_DEFECT_TYPES,
    TextureSpec,
    crop_image,
    generate,
    load_textures,
    photograph,
    positions,
    render,
)

TINY = TextureSpec(image_size=64, n_train=6, n_test_good=3, n_defects_per_type=2, seed=5)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_photographs_are_the_bundled_512_grey_textures() -> None:
    for category in TEXTURE_CATEGORIES:
        photo = photograph(category)
        assert photo.shape == (512, 512) and photo.dtype == np.uint8 and photo.std() > 10


def test_same_spec_same_bytes_other_seed_other_pixels(tmp_path: Path) -> None:
    a = load_textures("gravel", TINY, cache_dir=tmp_path / "a")
    b = load_textures("gravel", TINY, cache_dir=tmp_path / "b")
    root_a, root_b = (next((tmp_path / x).iterdir()) for x in "ab")
    assert root_a.name == root_b.name
    assert _files(root_a) == _files(root_b)
    assert [s.image_path.relative_to(root_a) for s in a] == [s.image_path.relative_to(root_b) for s in b]
    other = generate(TextureSpec(**{**TINY.__dict__, "seed": TINY.seed + 1}), "gravel")
    assert not np.array_equal(generate(TINY, "gravel")[0].image, other[0].image)


@pytest.mark.parametrize("category", TEXTURE_CATEGORIES)
def test_layout_loads_with_counts_labels_and_masks(category: str) -> None:
    ds = load_dataset("textures", category)  # into the test's own SEGAD_CACHE_DIR (tests/conftest.py)
    assert (ds.name, ds.category, ds.has_masks) == ("textures", category, True)
    # load_dataset uses the default spec; check the layout's shape on the tiny one as well.
    tiny = load_textures(category, TINY)
    for d, spec in ((ds, TextureSpec()), (tiny, TINY)):
        assert len(d.train_good) == spec.n_train
        test = d.test
        assert sum(s.label == 0 for s in test) == spec.n_test_good
        assert d.defect_types() == sorted(TEXTURE_DEFECT_TYPES)
        for kind in TEXTURE_DEFECT_TYPES:
            bad = [s for s in test if s.defect_type == kind]
            assert len(bad) == spec.n_defects_per_type and all(s.label == 1 for s in bad)
            assert all(s.mask_path is not None and s.mask_path.name == f"{s.stem}_mask.png" for s in bad)
    sample = tiny.test[-1]
    assert read_rgb(sample.image_path).shape == (64, 64, 3)  # grey files, read as RGB
    assert load_mask(sample.mask_path, 64).any()


def test_default_category_and_unknown_category() -> None:
    assert BUILTIN_DATASETS["textures"] == TEXTURE_CATEGORIES
    assert TEXTURE_CATEGORIES[0] == "brick"
    with pytest.raises(DatasetError, match="brick, gravel, grass"):
        load_dataset("textures", "carpet")
    with pytest.raises(DatasetError, match="brick, gravel, grass"):
        load_textures("carpet", TINY)


# How far (px, at 64 px) a defect's soft edge may change pixels beyond its mask; hard-edged ones not at all.
SOFT_EDGE = {"scratch": 0.0, "hole": 0.0, "stain": 3.0, "fold": 3.0, "foreign": 3.0, "contrast": 3.0}


@pytest.mark.parametrize("category", TEXTURE_CATEGORIES)
@pytest.mark.parametrize("kind", TEXTURE_DEFECT_TYPES)
def test_each_defect_changes_only_pixels_in_or_next_to_its_mask(category: str, kind: str) -> None:
    for index in range(TINY.n_defects_per_type):
        item = render(TINY, category, index, kind)
        pos = positions(TINY, category)[(Split.TEST, kind)][index]
        clean = np.clip(np.rint(crop_image(TINY, category, pos)), 0, 255).astype(np.uint8)  # the crop, untouched
        assert np.array_equal(item.clean, clean)
        assert item.image.shape == item.mask.shape == (64, 64) and item.image.dtype == np.uint8
        assert 0 < item.mask.sum() < 0.15 * item.mask.size  # a few per cent of the image
        # The mask lies inside the image, off its border row, as a defect planted in the crop would.
        assert not (item.mask[0].any() or item.mask[-1].any() or item.mask[:, 0].any() or item.mask[:, -1].any())
        diff = np.abs(item.image.astype(int) - clean.astype(int))
        from_mask = cv2.distanceTransform((~item.mask).astype(np.uint8), cv2.DIST_L2, 5)
        assert from_mask[diff > 0].max(initial=0) <= SOFT_EDGE[kind], f"{kind} changed pixels away from its mask"
        # ... and inside it the defect is a real change, not a rounding one.
        assert diff[item.mask].mean() > 4, f"{kind}: the masked pixels hardly changed"


def test_good_images_are_clean_crops_with_empty_masks() -> None:
    for split in (Split.TRAIN, Split.TEST):
        item = render(TINY, "brick", 0, GOOD, split)
        assert not item.mask.any() and np.array_equal(item.image, item.clean)


def test_no_test_image_equals_a_training_image() -> None:
    spec = TextureSpec(image_size=64, n_train=40, n_test_good=20, n_defects_per_type=3, seed=1)
    pos = positions(spec, "grass")
    train = {p[:2] for p in pos[(Split.TRAIN, GOOD)]}
    tests = [p for key, ps in pos.items() if key[0] == Split.TEST for p in ps]
    assert len(tests) == spec.n_test_good + len(TEXTURE_DEFECT_TYPES) * spec.n_defects_per_type
    assert all(max(abs(x - tx), abs(y - ty)) >= 4 for x, y, _ in tests for tx, ty in train)
    train_images = [render(spec, "grass", i, GOOD, Split.TRAIN).image for i in range(spec.n_train)]
    clean_tests = [render(spec, "grass", i, GOOD).image for i in range(spec.n_test_good)]
    clean_tests += [render(spec, "grass", 0, kind).clean for kind in TEXTURE_DEFECT_TYPES]
    assert not any(np.array_equal(t, x) for t in clean_tests for x in train_images)


def test_crops_are_oriented_every_way() -> None:
    pos = positions(TextureSpec(), "brick")[(Split.TRAIN, GOOD)]
    assert {p[2] for p in pos} == set(range(8))  # 4 rotations x flip
    x, y, _ = pos[0]
    crops = {crop_image(TINY, "brick", (x, y, o)).tobytes() for o in range(8)}
    assert len(crops) == 8


def test_strength_defaults_per_category_and_scales_the_change() -> None:
    assert set(DEFAULT_STRENGTH) == set(TEXTURE_CATEGORIES)
    assert TextureSpec().strength_for("grass") == DEFAULT_STRENGTH["grass"]
    weak, strong = (TextureSpec(**{**TINY.__dict__, "strength": k}) for k in (0.5, 2.0))
    a, b = render(weak, "brick", 0, "stain"), render(strong, "brick", 0, "stain")
    assert np.array_equal(a.mask, b.mask)  # same place and shape: only the intensity differs
    change = [np.abs(x.image.astype(int) - x.clean.astype(int))[x.mask].mean() for x in (a, b)]
    assert change[1] > 2 * change[0]
    with pytest.raises(ValueError, match="strength"):
        positions(TextureSpec(strength=0.0), "brick")


def test_written_once_into_the_cache(tmp_path: Path) -> None:
    ds = load_textures("brick", TINY, cache_dir=tmp_path)
    root = next(tmp_path.iterdir())
    first = ds.train_good[0].image_path
    stamp = first.stat().st_mtime_ns
    again = load_textures("brick", TINY, cache_dir=tmp_path)
    assert [s.image_path for s in ds] == [s.image_path for s in again]
    assert first.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [root.name]  # no temporary folder left behind
    load_textures("grass", TINY, cache_dir=tmp_path)
    assert len(list(tmp_path.iterdir())) == 2  # one folder per category
    # The folder names the strength in force: the default and the same strength spelt out share it ...
    load_textures("brick", TextureSpec(**{**TINY.__dict__, "strength": DEFAULT_STRENGTH["brick"]}), cache_dir=tmp_path)
    assert len(list(tmp_path.iterdir())) == 2
    # ... and another strength gets its own.
    load_textures("brick", TextureSpec(**{**TINY.__dict__, "strength": 0.5}), cache_dir=tmp_path)
    assert len(list(tmp_path.iterdir())) == 3
