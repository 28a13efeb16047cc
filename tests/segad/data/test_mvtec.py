from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from segad.data import DatasetError, Split, load_dataset, load_mvtec
from tests.conftest import TINY


def test_loads_every_split_with_masks_and_segments(tiny_mvtec: Path) -> None:
    ds = load_mvtec(tiny_mvtec, "widget")
    assert len(ds.train_good) == TINY.n_train
    assert sum(1 for s in ds.test if s.label == 0) == TINY.n_test_good
    assert sum(1 for s in ds.test if s.label == 1) == 5 * TINY.n_defects_per_type
    assert ds.has_masks and ds.has_segments
    for s in ds:
        assert (s.mask_path is not None) == (s.label == 1)
        if s.mask_path is not None:
            assert s.mask_path.name == f"{s.stem}_mask.png"
            assert s.mask_path.parent.name == s.defect_type


def test_masks_are_matched_by_stem_not_position(tiny_mvtec: Path) -> None:
    scratch = tiny_mvtec / "widget" / "test" / "scratch"
    gt = tiny_mvtec / "widget" / "ground_truth" / "scratch"
    # "000" becomes "zz" in both folders: sorted positions now disagree, stems still match.
    (scratch / "000.png").rename(scratch / "zz.png")
    (gt / "000_mask.png").rename(gt / "zz_mask.png")
    seg = tiny_mvtec / "widget" / "segments" / "test" / "scratch"
    (seg / "000.png").rename(seg / "zz.png")
    ds = load_mvtec(tiny_mvtec, "widget")
    pairs = {s.image_path.name: s.mask_path.name for s in ds if s.defect_type == "scratch"}
    assert pairs == {"001.png": "001_mask.png", "zz.png": "zz_mask.png"}


def test_defect_without_mask_is_an_error_listing_the_file(tiny_mvtec: Path) -> None:
    (tiny_mvtec / "widget" / "ground_truth" / "texture" / "001_mask.png").unlink()
    with pytest.raises(DatasetError, match=r"no mask[\s\S]*texture/001\.png"):
        load_mvtec(tiny_mvtec, "widget")


def test_mask_without_image_is_an_error_listing_the_file(tiny_mvtec: Path) -> None:
    (tiny_mvtec / "widget" / "test" / "missing" / "000.png").unlink()
    (tiny_mvtec / "widget" / "segments" / "test" / "missing" / "000.png").unlink()
    with pytest.raises(DatasetError, match=r"match no test image[\s\S]*missing/000_mask\.png"):
        load_mvtec(tiny_mvtec, "widget")


def test_without_ground_truth_the_set_is_image_level(tiny_mvtec: Path) -> None:
    shutil.rmtree(tiny_mvtec / "widget" / "ground_truth")
    ds = load_mvtec(tiny_mvtec, "widget")
    assert not ds.has_masks
    assert all(s.mask_path is None for s in ds)
    assert any("pixel metrics skipped" in n for n in ds.notes)


def test_missing_segment_map_is_an_error(tiny_mvtec: Path) -> None:
    (tiny_mvtec / "widget" / "segments" / "train" / "good" / "003.png").unlink()
    with pytest.raises(DatasetError, match=r"no segment map[\s\S]*train/good/003\.png"):
        load_mvtec(tiny_mvtec, "widget")


def test_unknown_category_names_the_ones_there(tiny_mvtec: Path) -> None:
    with pytest.raises(DatasetError, match=r"categories under .*: widget"):
        load_mvtec(tiny_mvtec, "bottle")


def test_registry_picks_the_only_category_and_rejects_bad_paths(tiny_mvtec: Path, tmp_path: Path) -> None:
    ds = load_dataset(tiny_mvtec)
    assert ds.category == "widget" and ds.name == "root"
    with pytest.raises(DatasetError, match="not a folder and not a built-in dataset"):
        load_dataset(tmp_path / "nope")


def test_samples_table_round_trips_to_a_frame(tiny_mvtec: Path) -> None:
    ds = load_mvtec(tiny_mvtec, "widget")
    frame = ds.to_frame()
    assert len(frame) == len(ds)
    assert set(frame["split"]) == {str(Split.TRAIN), str(Split.TEST)}
    assert frame["mask_path"].notna().sum() == 5 * TINY.n_defects_per_type


def test_write_once_is_atomic_and_writes_once(tmp_path: Path) -> None:
    from segad.data.mvtec import write_once

    root = tmp_path / "sets" / "made"
    calls = []

    def interrupted(tmp: Path) -> None:
        (tmp / "half.png").write_bytes(b"x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_once(root, interrupted)
    assert list((tmp_path / "sets").iterdir()) == []  # no half set, no temporary folder left

    def write(tmp: Path) -> None:
        calls.append(tmp)
        (tmp / "a.png").write_bytes(b"x")

    assert write_once(root, write) == root and (root / "a.png").is_file()
    write_once(root, write)
    assert len(calls) == 1

    # A concurrent writer that finished first: its set is kept and ours is dropped without an error.
    other = tmp_path / "sets" / "raced"

    def loses_the_race(tmp: Path) -> None:
        other.mkdir()
        (other / "theirs.png").write_bytes(b"x")
        (tmp / "ours.png").write_bytes(b"x")

    write_once(other, loses_the_race)
    assert [p.name for p in other.iterdir()] == ["theirs.png"]
    assert sorted(p.name for p in (tmp_path / "sets").iterdir()) == ["made", "raced"]
