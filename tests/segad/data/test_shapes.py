"""Native image sizes: read from headers, kept as a range, and a note for images outside it."""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from segad.data.images import image_shape
from segad.data.shapes import SourceShape, source_shapes


def _png(path: Path, h: int, w: int, dtype=np.uint8) -> Path:
    cv2.imwrite(str(path), np.full((h, w), 100, dtype))
    return path


def test_image_shape_reads_the_header_of_8_and_16_bit_files(tmp_path: Path) -> None:
    assert image_shape(_png(tmp_path / "a.png", 30, 50)) == (30, 50)
    assert image_shape(_png(tmp_path / "b.tif", 7, 9, np.uint16)) == (7, 9)


def test_a_note_for_another_aspect_or_scale_and_none_within_the_training_range() -> None:
    src = SourceShape.of([(300, 300), (310, 300)])
    assert src.note((300, 300)) == "" and src.note((305, 302)) == ""
    aspect = src.note((300, 600))
    assert "aspect 2.00 (training 0.97-1.00)" in aspect and "width 600 px (training 300)" in aspect
    scale = src.note((900, 900))
    assert "aspect" not in scale and "height 900 px (training 300-310)" in scale
    assert "width 120 px" in src.note((120, 120))
    assert SourceShape.from_dict(src.to_dict()) == src


def test_tiny_images_are_named_in_a_warning(tmp_path: Path) -> None:
    fine = [_png(tmp_path / f"{i}.png", 64, 64) for i in range(3)]
    tiny = [_png(tmp_path / "one.png", 1, 1), _png(tmp_path / "eight.png", 8, 8)]
    with pytest.warns(RuntimeWarning, match=r"2 of 5 training images are smaller than 32 px.*one.png \(1x1\)"):
        shapes = source_shapes([*fine, *tiny], "training images")
    assert shapes == [(64, 64)] * 3 + [(1, 1), (8, 8)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to say about images of a normal size
        source_shapes(fine)
