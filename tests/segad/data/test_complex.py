from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from detectors.errors import InputError
from segad.data import GOOD, DatasetError, Split, load_dataset, load_mask, load_segments, read_rgb
from segad.data.complex import (
    BENIGN_COMPONENTS,
    BODY,
    CABLE,
    CHIP,
    COMPLEX_COMPONENTS,
    COMPLEX_DEFECT_TYPES,
    CONNECTOR,
    LABEL,
    PINS,
    ComplexSpec,
    components,
    generate,
    load_complex,
    paint,
    part_of,
    render,
)
from segad.data.registry import BUILTIN_DATASETS

TINY = ComplexSpec(n_train=6, n_test_good=4, n_defects_per_type=2, seed=3)
BENIGN = [COMPLEX_COMPONENTS.index(c) for c in BENIGN_COMPONENTS]
# Where each defect may sit (a bent pin swings over the board next to it).
HOME = {
    "body_scratch": (BODY,),
    "chip_crack": (CHIP,),
    "chip_contamination": (CHIP,),
    "bent_pin": (PINS, BODY),
    "missing_pin": (PINS,),
    "connector_damage": (CONNECTOR,),
}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_same_spec_same_bytes_other_seed_other_pixels(tmp_path: Path) -> None:
    load_complex(TINY, cache_dir=tmp_path / "a")
    load_complex(TINY, cache_dir=tmp_path / "b")
    root_a, root_b = (next((tmp_path / x).iterdir()) for x in "ab")
    assert root_a.name == root_b.name
    files = _files(root_a)
    assert files == _files(root_b) and len(files) == 2 * 22 + 12  # images, segment maps, masks
    other = generate(replace(TINY, seed=TINY.seed + 1))
    assert not any(np.array_equal(x.image, y.image) for x, y in zip(generate(TINY), other, strict=True))


@pytest.mark.parametrize("kind", COMPLEX_DEFECT_TYPES)
def test_defects_change_only_masked_pixels_on_their_own_component(kind: str) -> None:
    for index in range(4):
        item = render(TINY, index, kind)
        assert item.image.shape == (128, 128, 3) and item.image.dtype == np.uint8
        assert 4 <= item.mask.sum() < 0.01 * item.mask.size  # small: under 1% of the image
        assert np.isin(item.components[item.mask], HOME[kind]).all(), f"{kind} left its component"
        assert not np.isin(item.components[item.mask], BENIGN).any()
        diff = np.abs(item.image.astype(int) - item.clean.astype(int)).max(axis=2)
        assert not diff[~item.mask].any(), f"{kind} changed pixels outside its mask"
        assert diff[item.mask].mean() > 15, f"{kind}: the masked pixels hardly changed"
        # The clean counterpart is the good part the defect was planted on: same noise, same variation.
        assert np.array_equal(item.clean, render(TINY, index, kind).clean)


def test_good_images_have_empty_masks_and_every_component() -> None:
    for split in (Split.TRAIN, Split.TEST):
        item = render(TINY, 0, GOOD, split)
        assert not item.mask.any() and np.array_equal(item.image, item.clean)
        assert set(np.unique(item.components)) == set(range(len(COMPLEX_COMPONENTS)))


def test_defect_free_image_statistics_match_good_ones() -> None:
    """No hidden signal: outside the mask a defective part is drawn like a good one (brightness, noise)."""
    good = np.array([render(TINY, i, GOOD).image.mean() for i in range(20)])
    bad = np.array([render(TINY, i % 4, k).image.mean() for i, k in enumerate(COMPLEX_DEFECT_TYPES * 3)])
    assert abs(good.mean() - bad.mean()) < 2 * np.hypot(good.std() / 20**0.5, bad.std() / 18**0.5) + 0.5


@pytest.mark.parametrize("index", range(3))
def test_component_map_covers_the_cable_and_the_label_where_they_are(index: int) -> None:
    part = part_of(TINY, index, GOOD)
    comp = components(part)
    img = paint(part)
    # Remove the cable: what changes is the cable's own footprint (plus its anti-aliased rim).
    away = np.array([[-50, -50], [-49, -50]], np.int32)
    changed = np.abs(paint(replace(part, cable=away, sleeve=away)) - img).max(axis=2) > 0
    assert changed.any() and (comp[changed] == CABLE).all()
    assert changed[comp == CABLE].mean() > 0.95
    # Remove the print: what changes lies on the label sticker.
    blank = np.zeros_like(part.code)
    changed = np.abs(paint(replace(part, text=("", ""), code=blank)) - img).max(axis=2) > 0
    assert changed.sum() > 100 and (comp[changed] == LABEL).all()
    # The sticker itself is white where not printed.
    assert np.median(img[comp == LABEL]) > 200
    # Dust lies on the table only.
    changed = np.abs(paint(replace(part, dust=())) - img).max(axis=2) > 0
    assert (comp[changed] == 0).all()


def test_good_parts_differ_in_label_cable_and_dust_only() -> None:
    parts = [part_of(TINY, i, GOOD, Split.TRAIN) for i in range(30)]
    assert len({p.text[0] for p in parts}) == 30 and len({p.text[1] for p in parts}) > 20  # serial, lot
    assert len({p.code.tobytes() for p in parts}) == 30
    assert len({len(p.dust) for p in parts}) >= 5
    cables = [components(p) == CABLE for p in parts]
    overlap = [(a & b).sum() / (a | b).sum() for a, b in itertools.pairwise(cables)]
    assert max(overlap) < 0.9 and np.mean(overlap) < 0.5  # the cable lies somewhere else each time
    # The board itself is the same part, only shifted by the fixture's play (the label sits on it).
    first = components(parts[0])
    for p in parts[1:]:
        dx, dy = p.body[0] - parts[0].body[0], p.body[1] - parts[0].body[1]
        assert max(abs(dx), abs(dy)) <= 6  # up to 3 px each way from the nominal place
        moved = np.roll(components(p), (-dy, -dx), axis=(0, 1))
        for k in (CHIP, PINS, CONNECTOR):
            assert np.array_equal(first == k, moved == k)
        board = np.isin(first, (BODY, CHIP, PINS, CONNECTOR, LABEL))
        assert np.array_equal(board, np.isin(moved, (BODY, CHIP, PINS, CONNECTOR, LABEL)))


def test_layout_loads_with_counts_masks_and_segments() -> None:
    ds = load_dataset("synthetic", "complex")  # the default spec, into the test's own SEGAD_CACHE_DIR
    assert (ds.name, ds.category, ds.has_masks, ds.has_segments) == ("synthetic", "complex", True, True)
    assert len(ds.train_good) == 200
    test = ds.test
    assert sum(s.label == 0 for s in test) == 60
    assert ds.defect_types() == sorted(COMPLEX_DEFECT_TYPES)
    for kind in COMPLEX_DEFECT_TYPES:
        bad = [s for s in test if s.defect_type == kind]
        assert len(bad) == 11 and all(s.mask_path.name == f"{s.stem}_mask.png" for s in bad)
    # 10 shots x 10 seeds leaves 56 defects to test on.
    sample = next(s for s in test if s.defect_type == "chip_crack")
    assert read_rgb(sample.image_path).shape == (128, 128, 3)
    mask = load_mask(sample.mask_path, 128)
    seg = load_segments(sample.segment_path, 128)
    assert mask.any() and (seg[mask] == CHIP).all()
    assert set(np.unique(seg)) == set(range(len(COMPLEX_COMPONENTS)))
    item = render(ComplexSpec(), int(sample.stem), "chip_crack")
    assert np.array_equal(seg, item.components) and np.array_equal(mask, item.mask)


def test_registry_categories_and_errors() -> None:
    assert BUILTIN_DATASETS["synthetic"] == ("widget", "complex")  # the default first
    assert load_dataset("synthetic").category == "widget"
    with pytest.raises(DatasetError, match="widget, complex"):
        load_dataset("synthetic", "gadget")
    with pytest.raises(InputError, match="choose from"):
        render(TINY, 0, "dent")
    with pytest.raises(InputError, match="good images only"):
        render(TINY, 0, "bent_pin", Split.TRAIN)
    with pytest.raises(InputError, match="at least 64"):
        load_complex(ComplexSpec(image_size=32))


def test_written_once_into_the_cache(tmp_path: Path) -> None:
    ds = load_complex(TINY, cache_dir=tmp_path)
    root = next(tmp_path.iterdir())
    first = ds.train_good[0].image_path
    stamp = first.stat().st_mtime_ns
    again = load_complex(TINY, cache_dir=tmp_path)
    assert [s.image_path for s in ds] == [s.image_path for s in again]
    assert first.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [root.name]  # no temporary folder left behind
    load_complex(replace(TINY, seed=9), cache_dir=tmp_path)
    assert len(list(tmp_path.iterdir())) == 2
