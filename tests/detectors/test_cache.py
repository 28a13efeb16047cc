from __future__ import annotations

from pathlib import Path

import numpy as np

from detectors import make_detector
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


def test_key_depends_on_config_size_and_fit_set_not_runtime_options() -> None:
    base = MapCache.key(make_detector("padim"), (8, 8), ["a", "b"])
    assert MapCache.key(make_detector("padim"), (8, 8), ["b", "a"]) == base  # fit set, not its order
    assert MapCache.key(make_detector("padim", device="cpu", batch_size=2), (8, 8), ["a", "b"]) == base
    assert MapCache.key(make_detector("padim", n_features=50), (8, 8), ["a", "b"]) != base
    assert MapCache.key(make_detector("padim"), (16, 16), ["a", "b"]) != base
    assert MapCache.key(make_detector("padim"), (8, 8), ["a", "c"]) != base
    assert MapCache.key(make_detector("patchcore"), (8, 8), ["a", "b"]) != base


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
