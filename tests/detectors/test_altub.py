from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from detectors import DETECTORS, load_detector, make_detector
from detectors.altub import AltUB
from detectors.errors import InputError
from tests.conftest import TinySet

# Two levels, four coupling blocks and a short schedule: the paper's flow and 100 epochs are the defaults.
FAST = {
    "epochs": 6,
    "batch_size": 4,
    "layers": "layer2+layer3",
    "flow_steps": 4,
    "progress": False,
    "device": "cpu",
}


@pytest.fixture(scope="module")
def fitted(tiny: TinySet, one_torch_thread) -> AltUB:
    return make_detector("altub", **FAST).fit(tiny.train)


def test_likelihood_rises_and_defects_stand_out(fitted: AltUB, tiny: TinySet) -> None:
    curve = fitted.loss_history_["train"]
    assert len(curve) == 6 * 3
    assert np.mean(curve[-3:]) < 0.5 * np.mean(curve[:3])  # NLL per dimension falls
    out = fitted.predict(tiny.test)
    assert out.maps.shape == (len(tiny.test), 96, 96) and out.maps.dtype == np.float32
    assert np.isfinite(out.maps).all()
    assert np.allclose(out.scores, out.maps.reshape(len(out.maps), -1).max(1))
    assert roc_auc_score(tiny.labels, out.scores) >= 0.9


def test_the_base_distribution_is_learned_and_scores_the_map(fitted: AltUB, tiny: TinySet) -> None:
    for base in fitted.bases_:  # moved away from N(0, I), mean and scale alike
        assert base.mean.abs().mean() > 0.05 and base.log_scale.abs().mean() > 0.03
    out = fitted.predict(tiny.test)
    # The same flows under a fixed N(0, I) base give another map: the learned base is what scores.
    state = {k: v.clone() for k, v in fitted.bases_.state_dict().items()}
    try:
        with torch.no_grad():
            for base in fitted.bases_:
                base.mean.zero_()
                base.log_scale.zero_()
        fixed = fitted.predict(tiny.test)
    finally:
        fitted.bases_.load_state_dict(state)
    assert np.abs(fixed.maps - out.maps).mean() > 0.05 * np.abs(out.maps).mean()
    # and the learned base models the flow's output of good features better than N(0, I) does
    names = ("layer2", "layer3")
    with torch.no_grad():
        feats = fitted.backbone(torch.as_tensor(tiny.train), names)
        for flow, base, n in zip(fitted.flows_, fitted.bases_, names, strict=True):
            z, _ = flow(feats[n].float())
            learned = base.nll_terms(z).mean()
            assert learned < 0.5 * z.pow(2).mean()


def test_seeded_save_load_and_checkpoint_resume(fitted: AltUB, tiny: TinySet, tmp_path: Path) -> None:
    loaded = load_detector(fitted.save(tmp_path / "altub.safetensors"))
    assert type(loaded) is AltUB and loaded.config == fitted.config
    assert np.array_equal(loaded.predict(tiny.test).maps, fitted.predict(tiny.test).maps)
    assert loaded.loss_history_ == fitted.loss_history_
    # A fit that leaves a checkpoint (a seeded rerun), then one that resumes from it: both equal the
    # uninterrupted run, the alternating optimiser's two sets of moments included.
    ckpt = {**FAST, "checkpoint_dir": str(tmp_path / "ckpt"), "checkpoint_every": 7}
    first = make_detector("altub", **ckpt).fit(tiny.train)
    assert list((tmp_path / "ckpt").glob("altub-train.safetensors"))
    resumed = make_detector("altub", **ckpt).fit(tiny.train)
    assert resumed.training_reports_[0].resumed_from_step == 14
    for det in (first, resumed):
        assert np.allclose(det.loss_history_["train"], fitted.loss_history_["train"])
        assert np.allclose(det.predict(tiny.test).maps, fitted.predict(tiny.test).maps, atol=1e-5)


def test_registry_and_bad_input(tiny: TinySet) -> None:
    assert DETECTORS["altub"] is AltUB
    with pytest.raises(InputError, match="at least 32x32"):
        make_detector("altub", **FAST).fit(tiny.train[:, :, :16, :16])
    with pytest.raises(InputError, match="freezing_interval"):
        make_detector("altub", **{**FAST, "freezing_interval": 0}).fit(tiny.train)
    with pytest.raises(InputError, match="no option"):
        make_detector("altub", freezing_intervals=3)
