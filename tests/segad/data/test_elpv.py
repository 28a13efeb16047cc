from __future__ import annotations

import numpy as np
import pytest

from segad.data import DatasetError, Split, load_dataset, load_elpv, load_image


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
