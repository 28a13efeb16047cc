from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from segad.data import DatasetError, load_dataset
from segad.protocol import SEGAD_SEEDS, fit_split, seed_split, seeds, tuning_defects


def test_holdout_is_fixed_and_disjoint(tiny_mvtec: Path) -> None:
    ds = load_dataset(tiny_mvtec)
    a, b = fit_split(ds), fit_split(ds)
    assert a == b and len(a.holdout_good) == 1 and len(a.fit_good) == 7
    assert not {s.image_path for s in a.holdout_good} & {s.image_path for s in a.fit_good}


def test_seed_split_draws_shots_from_defects_and_tests_the_rest(tiny_mvtec: Path) -> None:
    ds = load_dataset(tiny_mvtec)
    labels = np.array([s.label for s in ds.test])
    sp = seed_split(ds, 3, 333)
    assert len(sp.train_defects) == 3 and labels[sp.train_defects].all()
    assert not set(sp.train_defects) & set(sp.test)
    assert len(sp.test) == len(labels) - 3 and (labels[sp.test] == 0).sum() == (labels == 0).sum()
    assert np.array_equal(sp.train_defects, seed_split(ds, 3, 333).train_defects)
    assert not np.array_equal(sp.train_defects, seed_split(ds, 3, 576).train_defects)


def test_tuning_defects_are_in_no_seeds_shots_or_test_set(tiny_mvtec: Path) -> None:
    ds = load_dataset(tiny_mvtec)
    labels = np.array([s.label for s in ds.test])
    pool = tuning_defects(ds, 0.4)
    assert len(pool) == 4 and labels[pool].all() and np.array_equal(pool, tuning_defects(ds, 0.4))
    for seed in SEGAD_SEEDS:
        sp = seed_split(ds, 3, seed, pool)
        assert not set(pool) & set(sp.test) and not set(pool) & set(sp.train_defects)
        assert len(sp.test) == len(labels) - 3 - len(pool)  # every other image is still tested
    with pytest.raises(DatasetError, match=r"has 6 test defects \(after 4 reserved for tuning\)"):
        seed_split(ds, 6, 333, pool)
    assert len(tuning_defects(ds, 0.0)) == 0


def test_bad_shots_and_seeds(tiny_mvtec: Path) -> None:
    ds = load_dataset(tiny_mvtec)
    with pytest.raises(DatasetError, match=r"--shots 10: .* has 10 test defects"):
        seed_split(ds, 10, 333)
    assert seeds(3) == SEGAD_SEEDS[:3]
    with pytest.raises(ValueError, match="--seeds"):
        seeds(0)
