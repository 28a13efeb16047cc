from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from detectors import DETECTORS, make_detector
from detectors.base import DetectorConfig
from detectors.cache import MapCache, content_id


def test_maps_round_trip_as_float16_with_no_temp_files(tmp_path: Path) -> None:
    det = make_detector("padim")
    entry = MapCache(tmp_path).entry(det, (8, 8), ["a", "b"])
    m = np.random.default_rng(0).random((8, 8)).astype(np.float32) * 100
    assert entry.get("img") is None
    entry.put("img", m, 3.5)
    got, score = entry.get("img")
    assert got.dtype == np.float16 and np.allclose(got, m, rtol=1e-3) and score == 3.5
    assert not list(tmp_path.rglob("*.tmp"))


def test_key_depends_on_config_size_and_fit_set_not_result_neutral_options() -> None:
    base = MapCache.key(make_detector("padim", device="cpu"), (8, 8), ["a", "b"])
    neutral = make_detector("padim", device="cpu", batch_size=2, progress=False)
    assert MapCache.key(neutral, (8, 8), ["a", "b"]) == base  # PaDiM's batch size only chunks the work
    assert MapCache.key(make_detector("padim", n_features=50), (8, 8), ["a", "b"]) != base
    assert MapCache.key(make_detector("padim", device="cpu"), (16, 16), ["a", "b"]) != base
    assert MapCache.key(make_detector("padim", device="cpu"), (8, 8), ["a", "c"]) != base
    assert MapCache.key(make_detector("patchcore", device="cpu"), (8, 8), ["a", "b"]) != base


# Another valid value for each string option (numbers and flags are changed generically below).
OTHER_STRINGS = {
    "receptive_fields": "17+33+65",
    "backbone": "resnet18",
    "device": "cpu",
    "layers": "layer2",
    "teacher_layers": "layer3",
    "model_size": "medium",
    "checkpoint_dir": "elsewhere",
    "target_backbone": "resnet18",
    "latent_dims": "16+16+16",
    "learning_rates": "1e-3+1e-3+1e-3",
    "patch_sizes": "32+16+8",
    "align": "none",
    "image_score": "max",
    "pool_type": "max",
    "parallel_blocks": "1+1+1",
    "cell_sizes": "4+8",
}


def _other_value(name: str, value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 2  # +2 keeps odd sizes odd (draem's smooth_kernel)
    if isinstance(value, float):
        return value / 2 if value else 0.5  # stays inside (0, 1) ranges
    assert name in OTHER_STRINGS, f"add another valid value for the string option {name!r} to OTHER_STRINGS"
    return OTHER_STRINGS[name]


CONFIG_FIELDS = [(name, f.name) for name, cls in DETECTORS.items() for f in fields(cls.config_class)]


@pytest.mark.parametrize(("detector", "field"), CONFIG_FIELDS, ids=[f"{d}.{f}" for d, f in CONFIG_FIELDS])
def test_every_option_changes_the_key_or_says_why_not(detector: str, field: str) -> None:
    """The rule: an option that can change a fitted detector or its maps is in the key; one that cannot
    is listed in its config's RESULT_NEUTRAL with the reason."""
    cls = DETECTORS[detector]
    neutral = cls.config_class.RESULT_NEUTRAL
    if field in neutral:
        assert isinstance(neutral[field], str) and neutral[field].strip(), f"{detector}.{field}: give a reason"
        return
    config = cls.config_class()
    changed = cls.config_class.from_params({**config.to_params(), field: _other_value(field, getattr(config, field))})
    assert getattr(changed, field) != getattr(config, field)
    key = MapCache.key(cls(config), (8, 8), ["a", "b"], device_type="cpu")
    assert MapCache.key(cls(changed), (8, 8), ["a", "b"], device_type="cpu") != key, (
        f"{detector}.{field} does not change the cache key: put it in the key, or in "
        f"{cls.config_class.__name__}.RESULT_NEUTRAL with the reason it cannot change a fit"
    )


@pytest.mark.parametrize("cls", sorted({c.config_class for c in DETECTORS.values()}, key=lambda c: c.__name__))
def test_result_neutral_names_real_options(cls: type[DetectorConfig]) -> None:
    assert set(cls.RESULT_NEUTRAL) <= {f.name for f in fields(cls)}, "a typo would leave an option in the key"


def test_the_training_batch_size_is_in_the_key() -> None:
    for name in ("rd4ad", "fastflow", "efficientad", "draem"):
        small = MapCache.key(make_detector(name, batch_size=4), (8, 8), ["a", "b"], device_type="cpu")
        assert MapCache.key(make_detector(name, batch_size=16), (8, 8), ["a", "b"], device_type="cpu") != small


def test_the_device_type_is_in_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    det = make_detector("patchcore")
    on_cpu = MapCache.key(det, (8, 8), ["a", "b"], device_type="cpu")
    assert MapCache.key(det, (8, 8), ["a", "b"], device_type="cuda") != on_cpu
    # The resolved type, not the option's spelling: "auto" on a machine with a GPU keys as "cuda".
    assert MapCache.key(make_detector("patchcore", device="cpu"), (8, 8), ["a", "b"]) == on_cpu
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert det.config.identity()["device_type"] == "cuda"
    assert MapCache.key(det, (8, 8), ["a", "b"]) == MapCache.key(det, (8, 8), ["a", "b"], device_type="cuda")
    with pytest.raises(ValueError, match="device_type"):
        det.config.identity("auto")


def test_the_order_of_the_fit_images_is_in_the_key() -> None:
    det = make_detector("padim")
    assert MapCache.key(det, (8, 8), ["b", "a"], device_type="cpu") != MapCache.key(
        det, (8, 8), ["a", "b"], device_type="cpu"
    )


def test_checkpoint_and_progress_options_leave_the_key_alone() -> None:
    det = make_detector("fastflow", device="cpu")
    moved = type(det)(replace(det.config, checkpoint_dir="elsewhere", checkpoint_every=5, progress=False))
    assert MapCache.key(moved, (8, 8), ["a"]) == MapCache.key(det, (8, 8), ["a"])


def test_content_id_sees_pixels_not_objects() -> None:
    a = np.zeros((3, 4, 4), np.float32)
    assert content_id(a) == content_id(a.copy())
    b = a.copy()
    b[0, 0, 0] = 1
    assert content_id(a) != content_id(b)


def test_a_new_detector_version_never_reuses_old_maps(monkeypatch) -> None:
    from detectors.padim import Padim

    before = MapCache.key(make_detector("padim"), (8, 8), ["a"])
    monkeypatch.setattr(Padim, "version", Padim.version + 1)
    assert MapCache.key(make_detector("padim"), (8, 8), ["a"]) != before
