from __future__ import annotations

import numpy as np
import pytest

from segad.evaluate import MethodResult, format_table, normalise_scores


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
