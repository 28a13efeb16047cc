from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from detectors import DETECTORS, load_detector, make_detector
from detectors.ast import AST
from detectors.errors import InputError
from tests.conftest import TinySet

# A narrow student and a short schedule at a higher learning rate: the paper's widths (student 1,024
# channels), lr 2e-4 and 72 + 72 epochs are the defaults.
FAST = {
    "teacher_epochs": 6,
    "student_epochs": 6,
    "batch_size": 4,
    "learning_rate": 1e-3,
    "student_hidden": 32,
    "teacher_hidden": 32,
    "progress": False,
    "device": "cpu",
}


@pytest.fixture(scope="module")
def fitted(tiny: TinySet, one_torch_thread) -> AST:
    return make_detector("ast", **FAST).fit(tiny.train)


def test_both_phases_learn_and_defects_stand_out(fitted: AST, tiny: TinySet) -> None:
    assert [r.phase for r in fitted.training_reports_] == ["ast teacher", "ast student"]
    for phase in ("teacher", "student"):
        curve = fitted.loss_history_[phase]
        assert len(curve) == 6 * 3
        assert np.mean(curve[-3:]) < 0.5 * np.mean(curve[:3]), phase
    out = fitted.predict(tiny.test)
    assert out.maps.shape == (len(tiny.test), 96, 96) and out.maps.dtype == np.float32
    assert np.isfinite(out.maps).all() and (out.maps >= 0).all()
    assert np.allclose(out.scores, out.maps.reshape(len(out.maps), -1).mean(1))  # image_score="mean"
    assert roc_auc_score(tiny.labels, out.scores) >= 0.9
    # Every defect image scores above every good one by a wide margin (the trained pair: 8.3 good-score
    # standard deviations; an untrained student or teacher, a student blind to the features, or a map
    # ignoring the student all stay under 2 while still ranking these easy defects first).
    good, bad = out.scores[tiny.labels == 0], out.scores[tiny.labels == 1]
    assert bad.min() - good.max() >= 4 * good.std()


def test_max_score_and_the_map_is_the_student_teacher_gap(fitted: AST, tiny: TinySet) -> None:
    by_max = AST(fitted.config, image_score="max")
    by_max._set_state(fitted._state())
    by_max.image_size_ = fitted.image_size_
    out = by_max.predict(tiny.test)
    assert np.allclose(out.scores, out.maps.reshape(len(out.maps), -1).max(1))
    # unblurred, the map at the feature grid is mean_c (z_teacher - z_student)^2, exactly
    raw = AST(fitted.config, blur_sigma=0.0)
    raw._set_state(fitted._state())
    raw.image_size_ = (6, 6)  # layer3's grid of a 96 px image: no resampling
    x = torch.as_tensor(tiny.test[:2])
    with torch.no_grad():
        f = fitted._features(x)
        cond = fitted._cond(2, 6, 6)
        gap = (fitted.teacher_(f, cond)[0] - fitted.student_(f, cond)).pow(2).mean(1)
        assert torch.allclose(raw._map_fn()(x), gap, atol=1e-6)


def test_seeded_save_load_and_checkpoint_resume(fitted: AST, tiny: TinySet, tmp_path: Path) -> None:
    loaded = load_detector(fitted.save(tmp_path / "ast.safetensors"))
    assert type(loaded) is AST and loaded.config == fitted.config
    assert np.array_equal(loaded.predict(tiny.test).maps, fitted.predict(tiny.test).maps)
    assert loaded.loss_history_ == fitted.loss_history_
    # A fit that leaves checkpoints of both phases (a seeded rerun), then one that resumes them.
    ckpt = {**FAST, "checkpoint_dir": str(tmp_path / "ckpt"), "checkpoint_every": 7}
    first = make_detector("ast", **ckpt).fit(tiny.train)
    assert {p.name for p in (tmp_path / "ckpt").iterdir()} == {"ast-teacher.safetensors", "ast-student.safetensors"}
    resumed = make_detector("ast", **ckpt).fit(tiny.train)
    assert [r.resumed_from_step for r in resumed.training_reports_] == [14, 14]
    for det in (first, resumed):
        for phase in ("teacher", "student"):
            assert np.allclose(det.loss_history_[phase], fitted.loss_history_[phase])
        assert np.allclose(det.predict(tiny.test).maps, fitted.predict(tiny.test).maps, atol=1e-5)


def test_registry_and_bad_input(tiny: TinySet) -> None:
    assert DETECTORS["ast"] is AST
    with pytest.raises(InputError, match="at least 32x32"):
        make_detector("ast", **FAST).fit(tiny.train[:, :, :16, :16])
    with pytest.raises(InputError, match="image_score must be one of"):
        make_detector("ast", **{**FAST, "image_score": "median"}).fit(tiny.train)
    with pytest.raises(InputError, match="multiple of 4"):
        make_detector("ast", **{**FAST, "pos_enc_dim": 6}).fit(tiny.train)
    with pytest.raises(InputError, match="no option"):
        make_detector("ast", student_width=8)
