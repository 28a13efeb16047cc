from __future__ import annotations

import numpy as np
import pytest

from detectors.errors import InputError
from segad.suggest import disagreement, suggest


def test_images_near_the_threshold_where_detectors_disagree_come_first() -> None:
    scores = np.array([5.0, 0.1, -4.0, 0.2, 3.0])
    z = {"a": np.array([5.0, 2.0, -3.0, 0.1, 3.0]), "b": np.array([5.0, -2.0, -3.0, 0.1, 3.0])}
    picks = suggest(scores, 0.0, z, ["x"] * 5, n=3)
    # Image 1: near the threshold and the detectors split (+2 / -2); image 3: near, but they agree.
    assert [p.index for p in picks] == [1, 3, 4]
    assert picks[0].distance == pytest.approx(0.1) and picks[0].disagreement == pytest.approx(2.0)


def test_picks_are_spread_over_what_drove_the_scores() -> None:
    scores = np.array([0.0, 0.1, 0.2, 0.3, 5.0])
    z = {"a": np.zeros(5)}
    drivers = ["padim segment 1"] * 4 + ["padim segment 2"]
    picks = suggest(scores, 0.0, z, drivers, n=3)
    # Segment 1's four images are the closest, but the second pick comes from segment 2.
    assert [p.index for p in picks] == [0, 4, 1]
    assert [p.driver for p in picks][:2] == ["padim segment 1", "padim segment 2"]


def test_images_with_nothing_towards_defect_come_last() -> None:
    scores = np.array([-3.0, 0.5, 0.6, 0.7])
    picks = suggest(scores, 0.0, {"a": np.zeros(4)}, ["", "a segment 1", "a segment 1", "a segment 2"], n=4)
    assert [p.index for p in picks] == [1, 3, 2, 0]


def test_more_than_there_are_and_bad_input() -> None:
    z = {"a": np.zeros(2)}
    assert len(suggest(np.zeros(2), 0.0, z, ["", ""], n=5)) == 2
    assert disagreement(z).tolist() == [0.0, 0.0]
    with pytest.raises(InputError, match="--suggest"):
        suggest(np.zeros(2), 0.0, z, ["", ""], n=0)
