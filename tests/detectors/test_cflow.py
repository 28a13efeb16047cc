from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from detectors import DETECTORS, load_detector, make_detector
from detectors.cflow import CFlow
from detectors.errors import InputError
from tests.conftest import TinySet
from tests.detectors.test_patchcore import peak_in_mask

# A short schedule with narrow flows and a 10x learning rate: 6 meta-epochs of 2 sub-epochs of 10 steps.
FAST = {
    "meta_epochs": 6,
    "sub_epochs": 2,
    "coupling_blocks": 4,
    "condition_dim": 32,
    "learning_rate": 2e-3,
    "progress": False,
    "device": "cpu",
}


@pytest.fixture(scope="module")
def fitted(tiny: TinySet, one_torch_thread) -> CFlow:
    return make_detector("cflow", **FAST).fit(tiny.train)


def test_likelihood_rises_and_defects_stand_out(fitted: CFlow, tiny: TinySet) -> None:
    curve = fitted.loss_history_["train"]
    # 96 px: 12x12, 6x6 and 3x3 patches of 12 images -> 7 + 2 + 1 fiber batches per epoch.
    assert fitted.training_reports_[0].steps == 6 * 2 * 10 == len(curve)
    first, last = np.mean(curve[:10]), np.mean(curve[-10:])  # whole epochs: the same mix of levels
    assert last < first - 0.15
    out = fitted.predict(tiny.test)
    assert out.maps.shape == (len(tiny.test), 96, 96) and out.maps.dtype == np.float32
    assert np.isfinite(out.maps).all() and out.maps.min() >= 0 and out.maps.max() <= 3
    assert np.allclose(out.scores, out.maps.reshape(len(out.maps), -1).max(1))
    assert roc_auc_score(tiny.labels, out.scores) >= 0.9
    bad = tiny.labels == 1
    assert peak_in_mask(out.maps[bad], tiny.masks[bad]).mean() >= 0.5


def test_seeded_save_load_and_checkpoint_resume(fitted: CFlow, tiny: TinySet, tmp_path: Path, one_torch_thread) -> None:
    loaded = load_detector(fitted.save(tmp_path / "cflow.safetensors"))
    assert np.array_equal(loaded.predict(tiny.test).maps, fitted.predict(tiny.test).maps)
    assert loaded.loss_history_ == fitted.loss_history_
    short = {**FAST, "meta_epochs": 2}
    base = make_detector("cflow", **short).fit(tiny.train)
    # A fit that leaves checkpoints behind (the seeded repeat of ``base``), then one that resumes from
    # the last: both equal the uninterrupted run, step for step.
    ckpt = {**short, "checkpoint_dir": str(tmp_path / "ckpt"), "checkpoint_every": 15}
    first = make_detector("cflow", **ckpt).fit(tiny.train)
    assert (tmp_path / "ckpt" / "cflow-train.safetensors").is_file()
    resumed = make_detector("cflow", **ckpt).fit(tiny.train)
    assert resumed.training_reports_[0].resumed_from_step == 30
    want = base.predict(tiny.test).maps
    for det in (first, resumed):
        assert det.loss_history_["train"] == base.loss_history_["train"]
        assert np.allclose(det.predict(tiny.test).maps, want, atol=1e-5)


def test_registry_and_bad_input(tiny: TinySet) -> None:
    assert DETECTORS["cflow"] is CFlow
    with pytest.raises(InputError, match="at least 32x32"):
        make_detector("cflow", **FAST).fit(tiny.train[:, :, :24, :24])
    with pytest.raises(InputError, match="condition_dim must be a positive multiple of 4"):
        make_detector("cflow", **{**FAST, "condition_dim": 30}).fit(tiny.train)
    with pytest.raises(InputError, match="no option"):
        make_detector("cflow", coupling_block=3)
