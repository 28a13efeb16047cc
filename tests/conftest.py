from __future__ import annotations

from pathlib import Path

import pytest

from segad.data.synthetic import SyntheticSpec, write_mvtec

TINY = SyntheticSpec(image_size=64, n_train=8, n_test_good=4, n_defects_per_type=2, seed=7)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing a test computes lands in the user's cache."""
    monkeypatch.setenv("SEGAD_CACHE_DIR", str(tmp_path_factory.mktemp("segad-cache")))


@pytest.fixture
def tiny_mvtec(tmp_path: Path) -> Path:
    """A tiny synthetic set in the MVTec layout; returns the dataset root (category ``widget``)."""
    write_mvtec(TINY, tmp_path / "root")
    return tmp_path / "root"
