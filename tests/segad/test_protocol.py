from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from segad.data import DatasetError, load_dataset
from segad.protocol import SEGAD_SEEDS, fit_split, seed_split, seeds


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


def test_bad_shots_and_seeds(tiny_mvtec: Path) -> None:
    ds = load_dataset(tiny_mvtec)
    with pytest.raises(DatasetError, match=r"--shots 10: .* has 10 test defects"):
        seed_split(ds, 10, 333)
    assert seeds(3) == SEGAD_SEEDS[:3]
    with pytest.raises(ValueError, match="--seeds"):
        seeds(0)
