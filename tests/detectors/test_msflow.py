from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from detectors import DETECTORS, load_detector, make_detector
from detectors.errors import InputError
from detectors.msflow import MSFlow
from tests.conftest import TinySet
from tests.detectors.test_patchcore import peak_in_mask

# A short schedule with fewer, narrower blocks and a 30x learning rate: 6 epochs of 3 batches of 4.
FAST = {
    "epochs": 6,
    "batch_size": 4,
    "parallel_blocks": "1+1+2",
    "condition_dim": 16,
    "learning_rate": 3e-3,
    "progress": False,
    "device": "cpu",
}


@pytest.fixture(scope="module")
def fitted(tiny: TinySet, one_torch_thread) -> MSFlow:
    return make_detector("msflow", **FAST).fit(tiny.train)


def test_likelihood_rises_and_defects_stand_out(fitted: MSFlow, tiny: TinySet) -> None:
    curve = fitted.loss_history_["train"]
    assert fitted.training_reports_[0].steps == 6 * 3 == len(curve)
    assert np.mean(curve[-3:]) < 0.5 * np.mean(curve[:3])  # NLL per image, in nats
    out = fitted.predict(tiny.test)
    assert out.maps.shape == (len(tiny.test), 96, 96) and out.maps.dtype == np.float32
    assert np.isfinite(out.maps).all() and out.maps.min() >= 0 and out.maps.max() <= 3
    assert out.scores.shape == (len(tiny.test),) and np.isfinite(out.scores).all()
    assert roc_auc_score(tiny.labels, out.scores) >= 0.9
    # Every defect above every good image, by a margin: about 0.13 here; a flow trained without its
    # log-determinant (z shrunk towards 0, not a density) still ranks them but by under 0.03.
    good, bad = tiny.labels == 0, tiny.labels == 1
    assert out.scores[bad].min() - out.scores[good].max() >= 0.06
    assert peak_in_mask(out.maps[bad], tiny.masks[bad]).mean() >= 0.5


def test_seeded_save_load_and_checkpoint_resume(
    fitted: MSFlow, tiny: TinySet, tmp_path: Path, one_torch_thread
) -> None:
    loaded = load_detector(fitted.save(tmp_path / "msflow.safetensors"))
    assert np.array_equal(loaded.predict(tiny.test).maps, fitted.predict(tiny.test).maps)
    assert loaded.loss_history_ == fitted.loss_history_
    # A fit that leaves checkpoints behind (the seeded repeat of ``fitted``), then one that resumes
    # from the last: both equal the uninterrupted run, step for step.
    ckpt = {**FAST, "checkpoint_dir": str(tmp_path / "ckpt"), "checkpoint_every": 5}
    first = make_detector("msflow", **ckpt).fit(tiny.train)
    assert (tmp_path / "ckpt" / "msflow-train.safetensors").is_file()
    resumed = make_detector("msflow", **ckpt).fit(tiny.train)
    assert resumed.training_reports_[0].resumed_from_step == 15
    want = fitted.predict(tiny.test)
    for det in (first, resumed):
        assert det.loss_history_["train"] == fitted.loss_history_["train"]
        out = det.predict(tiny.test)
        assert np.allclose(out.maps, want.maps, atol=1e-5) and np.allclose(out.scores, want.scores, atol=1e-5)


def test_registry_and_bad_input(tiny: TinySet) -> None:
    assert DETECTORS["msflow"] is MSFlow
    with pytest.raises(InputError, match="at least 32x32"):
        make_detector("msflow", **FAST).fit(tiny.train[:, :, :24, :24])
    with pytest.raises(InputError, match="parallel_blocks"):
        make_detector("msflow", **{**FAST, "parallel_blocks": "2+5"}).fit(tiny.train)
    with pytest.raises(InputError, match="pool_type must be one of"):
        make_detector("msflow", **{**FAST, "pool_type": "mean"}).fit(tiny.train)
