"""The set the supervised models' end-to-end tests share (baselines and stacked inputs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from segad.data.synthetic import SyntheticSpec, write_mvtec

FEW_SHOT = SyntheticSpec(image_size=96, n_train=40, n_test_good=8, n_defects_per_type=3, seed=5)


@pytest.fixture(scope="session")
def few_shot_mvtec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 good training images and 15 test defects at 96 px; written once, only read by the tests."""
    root = tmp_path_factory.mktemp("few_shot")
    write_mvtec(FEW_SHOT, root)
    return root
