from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from detectors import DETECTORS, load_detector, make_detector
from detectors.errors import InputError
from detectors.mspba import MSPBA
from tests.conftest import TinySet

# The paper's three patch sizes (64 / 32 / 16); a short schedule at a higher learning rate than its 1e-5,
# and a memory of at most 1,024 embeddings per size, so the coreset runs too.
FAST = {
    "epochs": 2,
    "samples_per_image": 8,
    "batch_size": 8,
    "learning_rate": 1e-3,
    "max_bank": 1024,
    "progress": False,
    "device": "cpu",
}
STEPS = 2 * 12  # 2 epochs of 12 images x 8 samples / 8 per batch


@pytest.fixture(scope="module")
def fitted(tiny: TinySet, one_torch_thread) -> MSPBA:
    return make_detector("mspba", **FAST).fit(tiny.train)


def test_training_lowers_the_loss_and_finds_the_defects(fitted: MSPBA, tiny: TinySet) -> None:
    curve = fitted.loss_history_["train"]
    assert len(curve) == STEPS
    assert np.mean(curve[-4:]) < 0.92 * np.mean(curve[:4])
    assert np.mean(curve[-4:]) < 0.92 * 3 * np.log(12)  # below chance on the three position tasks
    out = fitted.predict(tiny.test)
    assert out.maps.shape == (len(tiny.test), 96, 96) and np.isfinite(out.maps).all()
    assert roc_auc_score(tiny.labels, out.scores) >= 0.9
    assert (out.maps >= 0).all() and np.allclose(out.scores, out.maps.reshape(len(out.maps), -1).max(1))


def test_one_memory_per_patch_size_at_the_reference_strides(fitted: MSPBA, tiny: TinySet) -> None:
    # 96 px: size 64 on layer3 (6 x 6 cells, 4 x 4 window) -> 3 x 3 patches per image, all kept; 32 and 16
    # on layer1 (24 x 24 cells; 8 x 8 and 4 x 4 windows) -> 17 x 17 and 21 x 21 per image, a coreset of 1,024.
    assert [tuple(b.shape) for b in fitted.banks_] == [(len(tiny.train) * 9, 64), (1024, 64), (1024, 64)]


def test_seeded_training_and_save_load(fitted: MSPBA, tiny: TinySet, tmp_path: Path, one_torch_thread) -> None:
    again = make_detector("mspba", **FAST).fit(tiny.train)
    assert np.allclose(again.loss_history_["train"], fitted.loss_history_["train"])
    loaded = load_detector(fitted.save(tmp_path / "mspba.safetensors"))
    assert np.array_equal(loaded.predict(tiny.test).maps, fitted.predict(tiny.test).maps)
    assert loaded.training_reports_ == fitted.training_reports_


def test_registry_and_bad_input(tiny: TinySet) -> None:
    assert DETECTORS["mspba"] is MSPBA
    with pytest.raises(InputError, match="patch size 64 does not fit"):
        make_detector("mspba", **FAST).fit(tiny.train[:, :, :48, :48])
    with pytest.raises(InputError, match="as many entries"):
        make_detector("mspba", **{**FAST, "layers": "layer1"}).fit(tiny.train)
