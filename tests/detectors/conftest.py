from __future__ import annotations

import pytest

from tests.conftest import TinySet, tiny_set


@pytest.fixture(scope="session")
def quality_set() -> TinySet:
    """``tiny``'s product with more images, for the quality tests of nets trained from scratch: 60 good
    training images (``tiny``'s 12 first) and 40 test images (20 good, 10 each of contamination and
    missing; ``tiny``'s 10 among them). On ``tiny``'s 4 x 6 good-defective pairs one pair moves AUROC by
    0.04, so another CPU's rounding, which changes a training run much as another seed does, flips a
    threshold; on 20 x 20 pairs one moves it by 0.0025."""
    return tiny_set(60, 20, 10)
