from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from detectors import DETECTORS, load_detector, make_detector
from detectors.errors import InputError
from detectors.maps import to_image_maps
from detectors.students import PLANS, Student, Students
from tests.conftest import TinySet

# Narrow students, batches of two and a higher learning rate, so 36 steps learn; the paper's widths,
# 100 epochs and lr 1e-4 are the defaults.
FAST = {"device": "cpu", "progress": False, "width": 8, "out_channels": 16, "batch_size": 2, "learning_rate": 5e-3}
EPOCHS = 6  # 11 training images (one held out) in batches of 2: 6 steps an epoch

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def fitted(tiny: TinySet, one_torch_thread) -> Students:
    return make_detector("students", **FAST, epochs=EPOCHS).fit(tiny.train)


def test_students_learn_the_teacher_and_find_planted_defects(fitted: Students, tiny: TinySet) -> None:
    curve = fitted.loss_history_["students"]
    assert len(curve) == 6 * EPOCHS  # under 100 steps the loop logs every step
    assert np.mean(curve[-5:]) < 0.6 * np.mean(curve[:5])
    out = fitted.predict(tiny.test)
    assert out.maps.shape == (len(tiny.test), 96, 96) and out.maps.dtype == np.float32
    assert np.isfinite(out.maps).all()
    assert np.array_equal(out.scores, out.maps.reshape(len(out.maps), -1).max(1))
    assert roc_auc_score(tiny.labels, out.scores) >= 0.9


def test_the_students_disagree_and_their_variance_is_scored(fitted: Students, tiny: TinySet) -> None:
    first, second = (s.net[0].weight for s in fitted.students_[0][:2])
    assert not torch.equal(first, second)  # each student has its own random initialisation
    e_mean, e_std, v_mean, v_std = fitted.score_stats_[0].tolist()
    assert e_mean > 0 and e_std > 0 and v_mean > 0 and v_std > 0
    # The variance alone marks the defects: higher inside the masks than outside, on the defect images.
    defects = tiny.labels == 1
    _, v = fitted._error_and_variance(torch.as_tensor(tiny.test[defects]))
    up = torch.nn.functional.interpolate(v[0][:, None], size=(96, 96), mode="bilinear")[:, 0].numpy()
    masks = tiny.masks[defects] > 0
    assert up[masks].mean() > 1.5 * up[~masks].mean()
    # The map is the paper's sum of both normalised terms.
    e, v = fitted._error_and_variance(torch.as_tensor(tiny.test[:1]))
    score = (e[0] - e_mean) / e_std + (v[0] - v_mean) / v_std
    expected = to_image_maps(score, (96, 96), fitted.config.blur_sigma).numpy()
    assert np.allclose(fitted.predict(tiny.test[:1]).maps, expected, atol=1e-5)


def test_seeded_checkpointed_and_saved(fitted: Students, tiny: TinySet, tmp_path: Path) -> None:
    ckpt = {"checkpoint_dir": str(tmp_path / "ckpt"), "checkpoint_every": 3}
    a = make_detector("students", **FAST, epochs=1, **ckpt).fit(tiny.train)  # writes a checkpoint at step 3
    assert np.allclose(a.loss_history_["students"], fitted.loss_history_["students"][:6])  # the same first steps
    d = make_detector("students", **FAST, epochs=1, **ckpt).fit(tiny.train)  # resumes from step 3
    assert [r.resumed_from_step for r in d.training_reports_] == [3]
    assert d.loss_history_ == a.loss_history_
    assert np.array_equal(d.predict(tiny.test[:2]).maps, a.predict(tiny.test[:2]).maps)
    loaded = load_detector(fitted.save(tmp_path / "students.safetensors"))
    assert np.array_equal(loaded.predict(tiny.test).maps, fitted.predict(tiny.test).maps)
    assert torch.equal(loaded.score_stats_, fitted.score_stats_)
    assert loaded.loss_history_ == fitted.loss_history_


def test_every_patch_size_has_its_receptive_field_and_the_multi_scale_ensemble_runs(tiny: TinySet) -> None:
    for p in PLANS:  # max pools swapped for average pools, so every input pixel of the field has a gradient
        net = Student(p, 2, 4)
        net.net = torch.nn.Sequential(
            *(torch.nn.AvgPool2d(2, 2) if isinstance(m, torch.nn.MaxPool2d) else m for m in net.net)
        )
        x = torch.randn(1, 3, 90, 90, requires_grad=True)
        y = net(x)
        assert y.shape[-2:] == (23, 23)  # ceil(90 / 4)
        y[0, :, 10, 10].sum().backward()
        rows = (x.grad[0].abs().sum((0, 2)) > 0).nonzero()[:, 0]
        assert (rows.min().item(), rows.max().item()) == (41 - p // 2, 41 + p // 2)  # centred on 4 * 10 + 1
    crop = np.ascontiguousarray(tiny.train[:3, :, :64, :72])
    det = make_detector("students", **{**FAST, "width": 2}, students=2, epochs=1, receptive_fields="17+33+65").fit(crop)
    assert [len(e) for e in det.students_] == [2, 2, 2] and det.score_stats_.shape == (3, 4)
    out = det.predict(np.ascontiguousarray(tiny.test[:2, :, :64, :72]))
    assert out.maps.shape == (2, 64, 72) and np.isfinite(out.maps).all()


def test_registry_and_bad_input(tiny: TinySet) -> None:
    assert DETECTORS["students"] is Students
    with pytest.raises(InputError, match="at least two good images"):
        make_detector("students", **FAST, epochs=1).fit(tiny.train[:1])
    with pytest.raises(InputError, match="at least 16x16 for layers 'layer2' \\(teacher_layers\\)"):
        make_detector("students", **FAST, epochs=1).fit(np.ascontiguousarray(tiny.train[:3, :, :12, :12]))
    with pytest.raises(InputError, match="unknown layers"):
        make_detector("students", **FAST, teacher_layers="layer9").fit(tiny.train[:3])
    for option, value in (("receptive_fields", "30"), ("students", 1), ("width", 0), ("validation_share", 1.0)):
        with pytest.raises(InputError, match=option):
            make_detector("students", **{**FAST, option: value})
