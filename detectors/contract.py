"""The contract every registered detector keeps, segad's own and plug-ins' alike, as one callable check.

A plug-in's own test suite calls ``check_detector(MyDetector, {...fast options...})``; segad's runs it
on every registered detector (``tests/detectors/test_contract.py``). It fits on a few tiny synthetic
images, so it takes seconds with options that shorten training. Each failure is an ``AssertionError``
that says which promise is broken:

- the class registers (a name, a dataclass config of flat primitives that round-trips through params);
- an unfitted detector refuses to predict or save;
- ``fit`` returns the detector itself;
- ``predict`` gives (N, H, W) float32 maps and (N,) float32 scores, finite, at the input size;
- scoring is pure: the same images give the same output, alone or in a batch, before and after a save;
- save and ``load_detector`` round-trip to the same maps and scores;
- bad input (wrong channels or rank, NaN, another size than the fit's) raises ``InputError``;
- every option not declared result-neutral changes the map-cache key.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from detectors.base import Detector, DetectorOutput
from detectors.cache import MapCache
from detectors.errors import InputError

PRIMITIVES = (bool, int, float, str)


def contract_images(size: int = 64, n_fit: int = 6, n_test: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Smooth random good images (fit) and the same kind with a bright square (test), ImageNet-normalised."""
    rng = np.random.default_rng(seed)

    def smooth(n: int) -> np.ndarray:
        coarse = rng.normal(0.0, 0.5, (n, 3, size // 8, size // 8)).astype(np.float32)
        return np.repeat(np.repeat(coarse, 8, axis=2), 8, axis=3)

    fit, test = smooth(n_fit), smooth(n_test)
    test[:, :, size // 4 : size // 4 + size // 8, size // 2 : size // 2 + size // 8] = 2.5
    return fit, test


def _other_value(value: Any) -> Any:
    """A different value of the same type, or None for strings (their valid values are the detector's)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 2
    if isinstance(value, float):
        return value / 2 if value else 0.5
    return None


def _same(a: DetectorOutput, b: DetectorOutput, what: str, rel: float = 1e-5) -> None:
    """Equal up to float32 rounding, relative to the map's scale (another batch may sum in another order)."""
    scale = max(1.0, float(np.abs(b.maps).max()), float(np.abs(b.scores).max()))
    map_gap, score_gap = float(np.abs(a.maps - b.maps).max()), float(np.abs(a.scores - b.scores).max())
    assert max(map_gap, score_gap) <= rel * scale, (
        f"{what}: max map difference {map_gap:.2e}, max score difference {score_gap:.2e} (scale {scale:.3g})"
    )


def check_detector(
    cls: type[Detector],
    params: Mapping[str, Any] | None = None,
    other_strings: Mapping[str, str] | None = None,
    image_size: int = 64,
) -> Detector:
    """Run the whole contract on ``cls`` built with ``params`` (e.g. a short schedule, ``device="cpu"``);
    ``other_strings``: another valid value of each string option, so its effect on the cache key is
    checked too (a string option without one is skipped). Returns the fitted detector."""
    from detectors.registry import PluginError, load_detector, register_detector

    name = getattr(cls, "name", cls)
    try:
        register_detector(cls)  # validates name and config; registering again is a no-op
    except PluginError as e:
        raise AssertionError(str(e)) from e
    config = cls.config_class.from_params(dict(params or {}))
    for f in fields(config):
        value = getattr(config, f.name)
        assert isinstance(value, PRIMITIVES), (
            f"{name}.{f.name} is {type(value).__name__}: options must be flat primitives"
        )
    assert cls.config_class.from_params(config.to_params()) == config, f"{name}: the config does not round-trip"

    fit_images, test_images = contract_images(image_size)
    fresh = cls(config)
    for call in (lambda: fresh.predict(test_images), lambda: fresh.save(Path(tempfile.gettempdir()) / "never")):
        try:
            call()
        except (RuntimeError, InputError):
            pass
        else:
            raise AssertionError(f"{name}: an unfitted detector must raise on predict and save")

    det = cls(config)
    assert det.fit(fit_images) is det, f"{name}: fit must return the detector itself"
    out = det.predict(test_images)
    n = len(test_images)
    assert isinstance(out, DetectorOutput), f"{name}: predict must return a DetectorOutput"
    assert out.maps.shape == (n, image_size, image_size) and out.maps.dtype == np.float32, (
        f"{name}: maps must be (N, H, W) float32 at the input size, got {out.maps.shape} {out.maps.dtype}"
    )
    assert out.scores.shape == (n,) and out.scores.dtype == np.float32, (
        f"{name}: scores must be (N,) float32, got {out.scores.shape} {out.scores.dtype}"
    )
    assert np.isfinite(out.maps).all() and np.isfinite(out.scores).all(), f"{name}: maps and scores must be finite"
    _same(det.predict(test_images), out, f"{name}: predicting twice gives another result")
    alone = DetectorOutput(out.maps[1:2], out.scores[1:2])
    _same(det.predict(test_images[1:2]), alone, f"{name}: an image alone", rel=1e-4)

    with tempfile.TemporaryDirectory() as tmp:
        loaded = load_detector(det.save(Path(tmp) / f"{name}.safetensors"))
    assert type(loaded) is cls and loaded.config == det.config, f"{name}: load_detector rebuilt another detector"
    _same(loaded.predict(test_images), out, f"{name}: the saved and loaded detector scores differently")

    bad = {
        "one channel": test_images[:, :1],
        "no batch axis": test_images[0],
        "NaN pixels": np.where(np.arange(image_size) == 3, np.nan, test_images).astype(np.float32),
        "another size than the fit's": test_images[:, :, : image_size // 2, : image_size // 2],
    }
    for what, images in bad.items():
        try:
            det.predict(images)
        except InputError:
            continue
        except Exception as e:
            raise AssertionError(f"{name}: {what} must raise InputError, got {type(e).__name__}: {e}") from e
        raise AssertionError(f"{name}: {what} must raise InputError, it was scored")

    key = MapCache.key(cls(config), (8, 8), ["a"], device_type="cpu")
    for f in fields(config):
        if f.name in config.RESULT_NEUTRAL:
            assert str(config.RESULT_NEUTRAL[f.name]).strip(), f"{name}.{f.name}: say why it is result-neutral"
            continue
        value = getattr(config, f.name)
        other = (other_strings or {}).get(f.name) if isinstance(value, str) else _other_value(value)
        if other is None:
            continue
        changed = cls.config_class.from_params({**config.to_params(), f.name: other})
        assert MapCache.key(cls(changed), (8, 8), ["a"], device_type="cpu") != key, (
            f"{name}.{f.name} does not change the cache key: put it in the key, or in RESULT_NEUTRAL with the reason"
        )
    return det


__all__ = ["check_detector", "contract_images"]
