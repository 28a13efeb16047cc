from __future__ import annotations

import numpy as np
import pytest

from segad.data.samples import GOOD, Split
from segad.data.synthetic import render
from tests.conftest import SPEC, TinySet, _batch


@pytest.fixture(scope="session")
def quality_set() -> TinySet:
    """``tiny``'s product with more images, for the quality tests of nets trained from scratch: 60 good
    training images (``tiny``'s 12 first) and 40 test images (20 good, 10 each of contamination and
    missing; ``tiny``'s 10 among them). On ``tiny``'s 4 x 6 good-defective pairs one pair moves AUROC by
    0.04, so another CPU's rounding, which changes a training run much as another seed does, flips a
    threshold; on 20 x 20 pairs one moves it by 0.0025."""
    train = [render(SPEC, i, GOOD, Split.TRAIN) for i in range(60)]
    test = [render(SPEC, i, GOOD) for i in range(20)]
    test += [render(SPEC, i, kind) for kind in ("contamination", "missing") for i in range(10)]
    return TinySet(
        _batch(train),
        _batch(test),
        np.array([0 if t.defect_type == GOOD else 1 for t in test]),
        np.stack([t.mask for t in test]),
    )
