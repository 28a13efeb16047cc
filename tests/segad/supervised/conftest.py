"""The few-shot set every supervised baseline's tests train on: 96 px synthetic widgets, model-ready."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from segad.data.images import normalise
from segad.data.samples import GOOD, Split
from segad.data.synthetic import SyntheticSpec, render

SPEC = SyntheticSpec(image_size=96, seed=11)  # 96 px: a 6x6 layer3 map, 3x3 at layer4
KINDS = ("contamination", "missing")  # the test defects: two of each, contamination first


@dataclass(frozen=True)
class Data:
    normal: np.ndarray  # training good images
    defects: np.ndarray  # labelled training defects
    test_good: np.ndarray  # held out
    test_defects: np.ndarray  # held out


def _batch(items) -> np.ndarray:
    return np.stack([normalise(it.image.astype(np.float32) / 255.0) for it in items])


@pytest.fixture(scope="session")
def data() -> Data:
    return Data(
        _batch([render(SPEC, i, GOOD, Split.TRAIN) for i in range(12)]),
        _batch([render(SPEC, i, k) for k in KINDS for i in (3, 4)]),
        _batch([render(SPEC, i, GOOD) for i in range(4)]),
        _batch([render(SPEC, i, k) for k in KINDS for i in (0, 1)]),
    )
