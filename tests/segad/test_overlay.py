from __future__ import annotations

import numpy as np
import pytest

from detectors.errors import InputError
from segad.overlay import MapScale, map_scale, outline, overlay


def _good_maps(n: int = 40) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.normal(1.0, 0.1, (n, 16, 16)).astype(np.float32)


def test_the_scale_spans_the_good_images_and_marks_the_threshold() -> None:
    good = _good_maps()
    scale = map_scale(good, target_fpr=0.1)
    maxima = good.reshape(len(good), -1).max(1)
    assert scale.low == pytest.approx(np.median(good))
    assert scale.high == pytest.approx(maxima.max())
    assert np.mean(maxima > scale.threshold) == pytest.approx(0.1, abs=0.03)  # its false-alarm share
    assert scale.low < scale.threshold < scale.high


def test_a_clean_image_stays_clean_and_a_defect_is_hot_on_the_same_scale() -> None:
    good = _good_maps()
    scale = map_scale(good, 0.05)
    image = np.full((16, 16, 3), 0.5, np.float32)
    calm = np.full((16, 16), scale.low, np.float32)  # a typical good map: the image shows through unchanged
    assert np.allclose(overlay(image, calm, scale), image)
    typical = good[0]  # noisy, but within the good range: barely tinted (its own min-max would paint it all)
    assert np.abs(overlay(image, typical, scale) - image).mean() < 0.05
    defect = calm.copy()
    defect[4:8, 4:8] = 10 * scale.high  # far above anything good: saturated, the rest untouched
    shown = overlay(image, defect, scale)
    assert not np.allclose(shown[4:8, 4:8], image[4:8, 4:8]) and np.allclose(shown[10:, 10:], image[10:, 10:])
    # The scale as the pipeline saves it (as_dict, in its JSON) colours exactly as the one training made.
    assert np.array_equal(overlay(image, defect, scale), overlay(image, defect, MapScale(**scale.as_dict())))


def test_bad_input() -> None:
    with pytest.raises(InputError, match="non-empty"):
        map_scale(np.zeros((0, 4, 4)), 0.05)
    with pytest.raises(InputError, match="target_fpr"):
        map_scale(_good_maps(), 1.5)


def test_outline_draws_the_border_of_a_region_only() -> None:
    image = np.zeros((20, 20, 3), np.float32)
    region = np.zeros((20, 20), bool)
    region[5:15, 5:15] = True
    drawn = outline(image, region)
    changed = drawn.any(axis=2)
    assert changed[5, 5:15].all() and changed[5:15, 5].all()  # the border
    assert not changed[9:11, 9:11].any() and not changed[0].any()  # not the inside, not elsewhere
    assert not image.any()  # the input is left as it was
