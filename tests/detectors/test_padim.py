from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from detectors import Padim, load_detector, make_detector
from tests.conftest import TinySet
from tests.detectors.test_patchcore import peak_in_mask

FAST = {"progress": False, "device": "cpu", "batch_size": 5}


@pytest.fixture(scope="module")
def fitted(tiny: TinySet) -> Padim:
    return make_detector("padim", **FAST).fit(tiny.train)


def test_finds_the_planted_defects(fitted: Padim, tiny: TinySet) -> None:
    out = fitted.predict(tiny.test)
    assert out.maps.shape == (len(tiny.test), 96, 96)
    assert roc_auc_score(tiny.labels, out.scores) >= 0.95
    bad = tiny.labels == 1
    assert peak_in_mask(out.maps[bad], tiny.masks[bad]).all()
    assert np.allclose(out.scores, out.maps.reshape(len(out.maps), -1).max(1))


def test_streaming_gaussian_matches_the_batch_estimate(fitted: Padim, tiny: TinySet) -> None:
    """Fit in batches of 5 must give the mean and covariance of all 12 embeddings at once."""
    emb = fitted._embed(torch.from_numpy(tiny.train)).flatten(2).permute(2, 0, 1).double()  # (P, N, d)
    mean = emb.mean(1)
    centred = emb - mean[:, None]
    cov = centred.transpose(1, 2) @ centred / (emb.shape[1] - 1) + 0.01 * torch.eye(emb.shape[2], dtype=emb.dtype)
    assert torch.allclose(fitted.mean_.double(), mean, atol=1e-5)
    # float32 outer products (on shifted data) against this float64 estimate: the Mahalanobis
    # distances they give must agree closely, even with fewer images than feature dimensions.
    test = fitted._embed(torch.from_numpy(tiny.test)).flatten(2).permute(2, 0, 1).double() - mean[:, None]
    ours = (torch.bmm(test, fitted.inv_covariance_.double()) * test).sum(-1)
    ref = (torch.bmm(test, torch.linalg.inv(cov)) * test).sum(-1)
    assert torch.allclose(ours, ref, rtol=1e-3)


def test_channel_subset_is_seeded(tiny: TinySet) -> None:
    a = make_detector("padim", **FAST, n_features=50, seed=1).fit(tiny.train[:3])
    b = make_detector("padim", **FAST, n_features=50, seed=1).fit(tiny.train[:3])
    c = make_detector("padim", **FAST, n_features=50, seed=2).fit(tiny.train[:3])
    assert torch.equal(a.channels_, b.channels_) and not torch.equal(a.channels_, c.channels_)
    assert a.mean_.shape[-1] == 50


def test_save_load_gives_identical_maps(fitted: Padim, tiny: TinySet, tmp_path: Path) -> None:
    again = load_detector(fitted.save(tmp_path / "padim.safetensors"))
    assert np.array_equal(fitted.predict(tiny.test).maps, again.predict(tiny.test).maps)
