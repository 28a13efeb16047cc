from __future__ import annotations

import numpy as np
import pytest

from features import segment_statistics
from features.vector import feature_matrix, feature_names


def test_layout_is_segads() -> None:
    names = feature_names(["patchcore", "padim"], 2)
    assert len(names) == 2 * 2 * 4 + 2
    assert names[:4] == [
        "patchcore/seg0/q995",
        "patchcore/seg0/skewness",
        "patchcore/seg0/kurtosis",
        "patchcore/seg0/mean",
    ]
    assert names[-2:] == ["patchcore/score", "padim/score"]
    rng = np.random.default_rng(0)
    maps = {"patchcore": rng.random((3, 8, 8)), "padim": rng.random((3, 8, 8))}
    scores = {"patchcore": np.array([1.0, 2, 3]), "padim": np.array([4.0, 5, 6])}
    segs = rng.integers(0, 2, (3, 8, 8)).astype(np.int32)
    X = feature_matrix(maps, scores, segs, 2)
    assert X.shape == (3, len(names))
    assert np.allclose(X[1, 8:16], segment_statistics(maps["padim"][1], segs[1], 2).ravel(), equal_nan=True)
    assert np.array_equal(X[:, -2:], [[1, 4], [2, 5], [3, 6]])


def test_mismatched_segments_are_an_error() -> None:
    with pytest.raises(ValueError, match="do not match"):
        feature_matrix({"a": np.zeros((2, 8, 8))}, {"a": np.zeros(2)}, np.zeros((2, 4, 4), np.int32), 1)


def test_without_image_scores() -> None:
    rng = np.random.default_rng(1)
    maps, scores = {"a": rng.random((2, 8, 8))}, {"a": np.array([1.0, 2.0])}
    segs = np.zeros((2, 8, 8), np.int32)
    full = feature_matrix(maps, scores, segs, 1)
    bare = feature_matrix(maps, scores, segs, 1, with_scores=False)
    assert (
        np.array_equal(full[:, :-1], bare, equal_nan=True)
        and feature_names(["a"], 1, with_scores=False)[-1] == "a/seg0/mean"
    )


@pytest.mark.parametrize("with_scores", [True, False])
def test_joined_blocks_are_the_layout_of_all_detectors_at_once(with_scores: bool) -> None:
    """A seed's stacked inputs' features join the cached detectors' in the pipeline's one layout."""
    from features.vector import join_features

    rng = np.random.default_rng(2)
    maps = {n: rng.random((3, 8, 8)) for n in ("a", "b", "c")}
    scores = {n: rng.random(3) for n in maps}
    segs = rng.integers(0, 2, (3, 8, 8)).astype(np.int32)

    def block(names: list[str]) -> np.ndarray:
        picked = {n: maps[n] for n in names}
        return feature_matrix(picked, {n: scores[n] for n in names}, segs, 2, with_scores=with_scores)

    joined = join_features([(block(["a", "b"]), 2), (block(["c"]), 1)], with_scores)
    np.testing.assert_array_equal(joined, block(["a", "b", "c"]))
