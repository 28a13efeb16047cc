from __future__ import annotations

import numpy as np
import pytest

from segad.evaluate import MethodResult, format_table, normalise_scores, paired_difference


def test_mean_and_std_over_seeds_and_the_table() -> None:
    r = MethodResult("segad")
    y = np.array([0, 0, 1, 1])
    r.add(333, y, np.array([0.1, 0.2, 0.3, 0.4]))
    r.add(576, y, np.array([0.1, 0.35, 0.3, 0.4]))
    assert r.auroc_mean == pytest.approx(0.875) and r.auroc_std == pytest.approx(0.125)
    d = r.to_dict()
    assert [row["seed"] for row in d["per_seed"]] == [333, 576]
    assert "segad" in format_table([r]) and "0.8750 ± 0.1250" in format_table([r])


def test_normalisation_uses_the_reference_statistics() -> None:
    ref = np.array([1.0, 3.0])
    assert np.allclose(normalise_scores(np.array([2.0, 4.0]), ref), [0.0, 2.0])
    assert np.allclose(normalise_scores(np.array([5.0]), np.array([5.0, 5.0])), [0.0])  # constant: no division by 0


def test_the_paired_difference_and_its_interval_over_test_resamples() -> None:
    """A score against itself: zero, with a zero interval (the same draw scores both). A score that
    separates the classes better: positive AUROC difference, negative FPR difference, and an interval
    that excludes zero; a little noise added to a score: an interval that straddles zero."""
    rng = np.random.default_rng(0)
    rows, same, noisy = [], [], []
    for _ in range(3):
        y = np.r_[np.zeros(200), np.ones(40)].astype(int)
        weak = rng.normal(0, 1, len(y)) + 1.0 * y
        strong = weak + 2.0 * y
        rows.append((y, strong, weak))
        same.append((y, weak, weak))
        noisy.append((y, weak + rng.normal(0, 0.05, len(y)), weak))
    zero = paired_difference(same, resamples=50)
    assert zero.auroc == zero.fpr95 == 0.0 and zero.auroc_interval == zero.fpr95_interval == (0.0, 0.0)
    better = paired_difference(rows, resamples=100)
    assert better.auroc > 0 and better.auroc_interval[0] > 0
    assert better.fpr95 < 0 and better.fpr95_interval[1] < 0
    level = paired_difference(noisy, resamples=100)
    assert level.auroc_interval[0] < 0 < level.auroc_interval[1]
    assert level.auroc_interval[0] <= level.auroc <= level.auroc_interval[1]
