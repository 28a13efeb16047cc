from __future__ import annotations

import os
import sys

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Each worker has a core: one OpenMP / numba thread each, set before torch and numba start their pools,
    # or two workers' threads contend and tiny networks' steps get many times slower.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("NUMBA_NUM_THREADS", "1")
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from segad.data.images import normalise
from segad.data.samples import GOOD, Split
from segad.data.synthetic import SyntheticSpec, render, write_mvtec

TINY = SyntheticSpec(image_size=64, n_train=8, n_test_good=4, n_defects_per_type=2, seed=7)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing a test computes lands in the user's cache, MLflow store or working folder."""
    monkeypatch.setenv("SEGAD_CACHE_DIR", str(tmp_path_factory.mktemp("segad-cache")))
    work = tmp_path_factory.mktemp("cwd")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    monkeypatch.chdir(work)  # MLflow's artifacts (./mlruns) and segad's outputs/ go here


@pytest.fixture(autouse=True, scope="module")
def _tracking_uri_left_unset():
    """A test file that sets MLflow's process-wide tracking URI (``--tracking-uri``, its own store fixture)
    leaves it unset, so the next file on the same xdist worker logs where MLFLOW_TRACKING_URI says."""
    yield
    if "mlflow" in sys.modules:
        from mlflow.tracking._tracking_service import utils

        utils._tracking_uri = None  # what set_tracking_uri sets; None: follow the environment again


@pytest.fixture(autouse=True)
def _isolated_registry():
    """Detectors a test registers (a plug-in, an anomalib model) do not leak into the next test."""
    from detectors import registry

    before, loaded = dict(registry.DETECTORS), registry._plugins_loaded
    yield
    registry.DETECTORS.clear()
    registry.DETECTORS.update(before)
    registry._plugins_loaded = loaded


@pytest.fixture(scope="session")
def postgres_url():
    """A live PostgreSQL server (tests/postgres.py). Without PostgreSQL installed the test is skipped,
    except in CI (CI=true), which must run it: there it fails."""
    from tests.postgres import NoPostgres, postgres_server

    try:
        server = postgres_server()
        url = server.__enter__()
    except NoPostgres as e:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(e))
    yield url
    server.__exit__(None, None, None)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for tiny trainable networks: they are latency-bound, and on a busy 2-core machine
    two OpenMP threads contend and a step gets 10-30x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_mvtec(tmp_path: Path) -> Path:
    """A tiny synthetic set in the MVTec layout; returns the dataset root (category ``widget``)."""
    write_mvtec(TINY, tmp_path / "root")
    return tmp_path / "root"


# A model-ready set for detector tests: 96 px so the stride-8 features see the defects.
SPEC = SyntheticSpec(image_size=96, seed=11)


@dataclass(frozen=True)
class TinySet:
    train: np.ndarray  # (n, 3, H, W) model-ready good images
    test: np.ndarray
    labels: np.ndarray
    masks: np.ndarray


def _batch(items) -> np.ndarray:
    return np.stack([normalise(it.image.astype(np.float32) / 255.0) for it in items])


def tiny_set(n_train: int, n_good: int, n_each: int) -> TinySet:
    """``n_train`` good training images; ``n_good`` good test images and ``n_each`` of contamination and of
    missing. The first images of a larger set are a smaller set's."""
    train = [render(SPEC, i, GOOD, Split.TRAIN) for i in range(n_train)]
    test = [render(SPEC, i, GOOD) for i in range(n_good)]
    test += [render(SPEC, i, kind) for kind in ("contamination", "missing") for i in range(n_each)]
    return TinySet(
        _batch(train),
        _batch(test),
        np.array([0 if t.defect_type == GOOD else 1 for t in test]),
        np.stack([t.mask for t in test]),
    )


@pytest.fixture(scope="session")
def tiny() -> TinySet:
    return tiny_set(12, 4, 3)
