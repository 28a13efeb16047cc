from __future__ import annotations

import hashlib
from collections import Counter

import numpy as np
import pytest

from segad.data import BUILTIN_DATASETS, Dataset, DatasetError, Sample, Split, load_dataset, load_elpv, load_image
from segad.data import elpv as elpv_module
from segad.data.elpv import dra_split, elpv_labels_file
from segad.protocol import SEGAD_SEEDS, seed_split


@pytest.mark.parametrize(("category", "train", "test_good", "bad"), [("mono", 412, 176, 313), ("poly", 644, 276, 402)])
def test_counts_and_fixed_split(category: str, train: int, test_good: int, bad: int) -> None:
    ds = load_elpv(category)
    assert len(ds.train_good) == train
    assert sum(1 for s in ds.test if s.label == 0) == test_good
    assert sum(1 for s in ds.test if s.label == 1) == bad
    assert not ds.has_masks
    assert all(s.split == Split.TEST for s in ds if s.label == 1)
    assert [s.image_path for s in ds] == [s.image_path for s in load_elpv(category)]  # same split every time


def test_uncertain_cells_only_on_request() -> None:
    ds = load_elpv("mono", include_uncertain=True)
    types = {s.defect_type for s in ds if s.label == 1}
    assert types == {"defect", "p1of3", "p2of3"}
    assert sum(1 for s in ds if s.label == 1) == 313 + 117 + 56


def test_real_images_load() -> None:
    ds = load_dataset("elpv", "poly")
    x = load_image(ds.samples[0].image_path, 64)
    assert x.shape == (3, 64, 64) and x.dtype == np.float32
    assert np.allclose(x[0] * 0.229 + 0.485, x[1] * 0.224 + 0.456, atol=1e-5)  # grey cells: equal channels


def test_bad_category() -> None:
    with pytest.raises(DatasetError, match="mono"):
        load_elpv("cdte")


# The DRA split (DevNet, DRA, AHL): DRA's data/convert_elpv.py, good cells of both types pooled.
DRA_TRAIN_GOOD, DRA_TEST_GOOD, DRA_MONO_DEFECTS, DRA_POLY_DEFECTS = 1131, 377, 313, 402


def _rel(s: Sample) -> str:
    return s.image_path.relative_to(elpv_labels_file().parent).as_posix()


def _dra_script_lists() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The lists DRA's script builds, read as it reads them: normal (p = 0) names in row order, split by sklearn."""
    from sklearn.model_selection import train_test_split

    data = np.genfromtxt(elpv_labels_file(), dtype=["|S19", "<f8", "|S4"], names=["path", "probability", "type"])
    names, probs, types = np.char.decode(data["path"]), data["probability"], np.char.decode(data["type"])
    train, test, _, _ = train_test_split(names[probs == 0], probs[probs == 0], test_size=0.25, random_state=42)
    return train, test, names[(probs == 1) & (types == "mono")], names[(probs == 1) & (types == "poly")]


def _fingerprint(ds: Dataset) -> str:
    return hashlib.sha256("\n".join(f"{s.stem} {s.label} {s.split}" for s in ds).encode()).hexdigest()[:16]


def test_dra_counts() -> None:
    ds = load_dataset("elpv", "dra")
    assert (ds.name, ds.category, ds.has_masks) == ("elpv", "dra", False)
    assert len(ds.train_good) == DRA_TRAIN_GOOD
    assert sum(1 for s in ds.test if s.label == 0) == DRA_TEST_GOOD
    assert Counter(s.defect_type for s in ds.test if s.label == 1) == {
        "mono": DRA_MONO_DEFECTS,
        "poly": DRA_POLY_DEFECTS,
    }
    assert all(s.split == Split.TEST for s in ds if s.label == 1)
    assert len(ds) == DRA_TRAIN_GOOD + DRA_TEST_GOOD + DRA_MONO_DEFECTS + DRA_POLY_DEFECTS  # no uncertain cell
    assert [(s.image_path, s.split) for s in ds] == [(s.image_path, s.split) for s in load_elpv("dra")]


def test_dra_split_equals_train_test_split() -> None:
    train, test, mono, poly = _dra_script_lists()
    ds = load_elpv("dra")
    assert sorted(_rel(s) for s in ds.train_good) == sorted(train)
    assert sorted(_rel(s) for s in ds.test if s.label == 0) == sorted(test)
    assert [_rel(s) for s in ds.test if s.defect_type == "mono"] == list(mono)
    assert [_rel(s) for s in ds.test if s.defect_type == "poly"] == list(poly)


@pytest.mark.parametrize("n", [1508, 7, 100])
def test_dra_split_indices_are_sklearns(n: int) -> None:
    from sklearn.model_selection import train_test_split

    train, test = train_test_split(np.arange(n), test_size=0.25, random_state=42)
    ours_train, ours_test = dra_split(n)
    assert ours_train.tolist() == train.tolist() and ours_test.tolist() == test.tolist()


def test_dra_pools_both_cell_types() -> None:
    kind = {r.split()[0]: r.split()[2] for r in elpv_labels_file().read_text().splitlines() if r.strip()}
    ds = load_elpv("dra")
    for side in (ds.train_good, [s for s in ds.test if s.label == 0], [s for s in ds.test if s.label == 1]):
        assert {kind[_rel(s)] for s in side} == {"mono", "poly"}


def test_dra_shots_come_out_of_the_test_defects() -> None:
    ds = load_dataset("elpv", "dra")
    split = seed_split(ds, shots=10, seed=SEGAD_SEEDS[0])
    labels = np.array([s.label for s in ds.test])
    assert len(split.train_defects) == 10 and labels[split.train_defects].all()
    assert not set(split.train_defects) & set(split.test)
    assert np.sum(labels[split.test] == 0) == DRA_TEST_GOOD
    assert np.sum(labels[split.test] == 1) == DRA_MONO_DEFECTS + DRA_POLY_DEFECTS - 10


def test_mono_and_poly_splits_unchanged() -> None:
    assert _fingerprint(load_elpv("mono")) == "f920de6caf352d07"
    assert _fingerprint(load_elpv("poly")) == "f1599693085faa47"


def test_categories_registered() -> None:
    assert BUILTIN_DATASETS["elpv"] == ("mono", "poly", "dra")  # the default first
    assert load_dataset("elpv").category == "mono"


@pytest.mark.parametrize("load", [load_elpv, lambda c: load_dataset("elpv", c)])
def test_bad_category_names_the_accepted_ones(load) -> None:
    with pytest.raises(DatasetError, match="mono, poly, dra; got 'DRA'"):
        load("DRA")


def test_dra_refuses_uncertain_cells() -> None:
    with pytest.raises(DatasetError, match="uncertain"):
        load_elpv("dra", include_uncertain=True)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("images/cell0001.png  0.0  mono\nimages/cell0002.png  1.0\n", r"labels.csv:2: expected"),
        ("images/cell0001.png  0.0  cdte\n", r"labels.csv:1: expected"),
        ("images/cell0001.png  half  mono\n", r"labels.csv:1: defect probability 'half'"),
        ("images/cell0001.png  0.0  mono\nimages/cell0002.png  0.0  poly\n", "0 defect cells"),
    ],
)
def test_dra_bad_labels_file(tmp_path, monkeypatch, text: str, match: str) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text(text)
    monkeypatch.setattr(elpv_module, "elpv_labels_file", lambda: labels)
    with pytest.raises(DatasetError, match=match):
        load_elpv("dra")
