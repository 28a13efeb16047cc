from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from detectors import DETECTORS, load_detector
from detectors.base import DetectorOutput
from detectors.errors import InputError
from detectors.memseg import MemSeg, MemSegConfig, nearest_differences, warmup_cosine
from tests.conftest import TinySet

# A narrow decoder and a short schedule: enough for the synthetic test defects on a CPU.
FAST = {"steps": 8, "batch_size": 4, "decoder_width": 8}
RUN = {"device": "cpu", "progress": False}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def fitted(tiny: TinySet, one_torch_thread: None) -> MemSeg:
    return MemSeg(**FAST, **RUN).fit(tiny.train)


@pytest.fixture(scope="module")
def output(fitted: MemSeg, tiny: TinySet) -> DetectorOutput:
    return fitted.predict(tiny.test)


def test_training_lowers_the_loss_and_finds_the_defects(fitted: MemSeg, output: DetectorOutput, tiny: TinySet) -> None:
    curve = fitted.loss_history_["train"]
    assert len(curve) == FAST["steps"]
    assert np.mean(curve[-3:]) < 0.85 * np.mean(curve[:3])
    out = output
    assert out.maps.shape == (len(tiny.test), 96, 96) and out.maps.dtype == np.float32
    assert np.isfinite(out.maps).all() and out.maps.min() >= 0 and out.maps.max() <= 1
    assert out.scores.shape == (len(tiny.test),) and out.scores.dtype == np.float32
    assert roc_auc_score(tiny.labels, out.scores) >= 0.9
    # The memory: the default of 10 good training images, three levels each.
    assert [len(m) for m in fitted.memory_] == [10, 10, 10]


def test_score_is_the_mean_of_the_top_pixels(fitted: MemSeg, output: DetectorOutput) -> None:
    out = output
    top = np.sort(out.maps.reshape(len(out.maps), -1), axis=1)[:, -fitted.config.top_k :]
    assert np.allclose(out.scores, top.mean(axis=1), atol=1e-6)


def test_save_load_round_trip(fitted: MemSeg, output: DetectorOutput, tiny: TinySet, tmp_path: Path) -> None:
    loaded = load_detector(fitted.save(tmp_path / "memseg.safetensors"))
    assert isinstance(loaded, MemSeg) and loaded.config == fitted.config
    a, b = loaded.predict(tiny.test), output
    assert np.array_equal(a.maps, b.maps) and np.array_equal(a.scores, b.scores)
    assert loaded.training_reports_ == fitted.training_reports_


def test_seeded_and_resumable(tiny: TinySet, tmp_path: Path) -> None:
    short = {**FAST, **RUN, "steps": 2, "batch_size": 2, "memory_size": 3}
    first = MemSeg(**short).fit(tiny.train)
    a = first.loss_history_["train"]
    assert MemSeg(**short).fit(tiny.train).loss_history_["train"] == a
    assert MemSeg(**short, seed=1).fit(tiny.train).loss_history_["train"] != a
    # A checkpoint at step 1 is left behind; a second fit resumes from it and ends where one fit ends.
    ckpt = {**short, "checkpoint_dir": str(tmp_path), "checkpoint_every": 1}
    MemSeg(**ckpt).fit(tiny.train)
    resumed = MemSeg(**ckpt).fit(tiny.train)
    assert resumed.training_reports_[0].resumed_from_step == 1
    assert np.allclose(resumed.loss_history_["train"], a, rtol=1e-5)
    images = tiny.test[:3]
    assert np.allclose(resumed.predict(images).maps, first.predict(images).maps, atol=1e-5)


def test_each_input_is_compared_with_its_nearest_memory_image() -> None:
    g = torch.Generator().manual_seed(0)
    memory = [torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 6, 4, 4, generator=g)]
    inputs = [torch.stack([m[2], m[0]]) + 0.01 for m in memory]
    diffs = nearest_differences(inputs, memory)
    for d, m, f in zip(diffs, memory, inputs, strict=True):
        assert d.shape == f.shape
        assert torch.allclose(d, torch.full_like(d, 1e-4), atol=1e-6)  # (0.01)^2 from its own image
        assert not torch.allclose((m[1] - f[0]) ** 2, d[0])


def test_the_learning_rate_warms_up_then_anneals() -> None:
    f = warmup_cosine(100, 0.1, 3e-3, 1e-4)
    assert f(0) == pytest.approx(1e-4 / 3e-3) and f(10) == pytest.approx(1.0)
    assert f(5) == pytest.approx((1e-4 + 0.5 * (3e-3 - 1e-4)) / 3e-3)
    assert f(99) == pytest.approx(1e-4 / 3e-3, rel=1e-2) and f(55) < f(20)


def test_registry_and_bad_input(fitted: MemSeg, tiny: TinySet) -> None:
    assert DETECTORS["memseg"] is MemSeg
    with pytest.raises(InputError, match="at least two good images"):
        MemSeg(**FAST, **RUN).fit(tiny.train[:1])
    with pytest.raises(InputError, match="divisible by 32"):
        MemSeg(**FAST, **RUN).fit(tiny.train[:, :, :80, :80])
    with pytest.raises(InputError, match="resize to the fitted size"):
        fitted.predict(tiny.test[:, :, :64, :64])
    with pytest.raises(InputError, match="batch_size >= 2"):
        MemSeg(**{**FAST, "batch_size": 1}, **RUN).fit(tiny.train)
    with pytest.raises(InputError, match="memory_size"):
        MemSegConfig(memory_size=0)
    with pytest.raises(InputError, match="min_learning_rate"):
        MemSegConfig(learning_rate=1e-5)
