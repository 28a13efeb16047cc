from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from detectors import make_detector
from detectors.cache import MapCache
from segad.maps import ImageSet, compute_maps
from tests.conftest import TinySet

FAST = {"coreset_ratio": 0.1, "progress": False, "device": "cpu"}
PADIM = {"progress": False, "device": "cpu"}


def test_second_call_hits_and_a_config_change_misses(tiny: TinySet, tmp_path: Path) -> None:
    cache = MapCache(tmp_path)
    fit, test = ImageSet.from_arrays(tiny.train), ImageSet.from_arrays(tiny.test)
    first = compute_maps(make_detector("patchcore", **FAST), fit, test, (96, 96), cache)
    assert first.cached_maps == 0 and first.fit_seconds > 0
    second = compute_maps(make_detector("patchcore", **FAST), fit, test, (96, 96), cache)
    assert second.cached_maps == len(test) and second.fit_seconds == 0
    assert np.array_equal(first.maps, second.maps) and np.array_equal(first.scores, second.scores)
    # Runtime-only options do not change the key; result-changing ones do.
    assert compute_maps(make_detector("patchcore", **{**FAST, "batch_size": 3}), fit, test, (96, 96), cache).cached_maps
    changed = compute_maps(make_detector("patchcore", **{**FAST, "coreset_ratio": 0.2}), fit, test, (96, 96), cache)
    assert changed.cached_maps == 0 and changed.fit_seconds > 0
    refit = compute_maps(
        make_detector("patchcore", **FAST), ImageSet.from_arrays(tiny.train[1:]), test, (96, 96), cache
    )
    assert refit.cached_maps == 0  # another fit set never returns stale maps


def test_interrupted_run_keeps_finished_maps(tiny: TinySet, tmp_path: Path) -> None:
    cache = MapCache(tmp_path)
    fit = ImageSet.from_arrays(tiny.train)
    full = ImageSet.from_arrays(tiny.test)
    calls = []

    def flaky(idx):
        calls.append(list(idx))
        if len(calls) > 1:
            raise KeyboardInterrupt
        return tiny.test[list(idx)]

    with pytest.raises(KeyboardInterrupt):
        compute_maps(make_detector("padim", **PADIM), fit, ImageSet(full.ids, flaky), (96, 96), cache, chunk=4)
    resumed = compute_maps(make_detector("padim", **PADIM), fit, full, (96, 96), cache, chunk=4)
    assert resumed.cached_maps == 4 and resumed.fit_seconds == 0
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),  # a copy cut short
        lambda p: p.write_bytes(b""),  # a full disk
        lambda p: np.savez(p.open("wb"), score=np.float32(1)),  # a stray file: no map
    ],
    ids=["truncated", "empty", "no-map"],
)
def test_a_damaged_cache_file_is_named_removed_and_recomputed(tiny: TinySet, tmp_path: Path, damage) -> None:
    cache = MapCache(tmp_path)
    fit, test = ImageSet.from_arrays(tiny.train), ImageSet.from_arrays(tiny.test)
    first = compute_maps(make_detector("patchcore", **FAST), fit, test, (96, 96), cache)
    detector_file = next(tmp_path.rglob("detector.safetensors"))
    map_file = sorted(tmp_path.rglob("*.npz"))[0]
    damage(map_file)
    detector_file.write_bytes(detector_file.read_bytes()[:100])
    with pytest.warns(RuntimeWarning) as caught:
        again = compute_maps(make_detector("patchcore", **FAST), fit, test, (96, 96), cache)
    said = " ".join(str(w.message) for w in caught)
    assert str(detector_file) in said and str(map_file) in said and "damaged" in said
    assert again.fit_seconds > 0 and again.cached_maps == len(test) - 1  # refitted; only the damaged map redone
    # The redone map was predicted alone, not in a batch: equal up to float32 rounding, stored as float16.
    assert np.allclose(first.maps, again.maps, rtol=1e-3) and np.allclose(first.scores, again.scores, rtol=1e-5)
    healed = compute_maps(make_detector("patchcore", **FAST), fit, test, (96, 96), cache)
    assert healed.cached_maps == len(test) and healed.fit_seconds == 0  # rewritten: later runs read them


def test_no_cache_recomputes_and_clear_empties(tiny: TinySet, tmp_path: Path) -> None:
    fit, test = ImageSet.from_arrays(tiny.train[:4]), ImageSet.from_arrays(tiny.test[:2])
    out = compute_maps(make_detector("padim", **PADIM), fit, test, (96, 96), None)
    assert out.cached_maps == 0 and out.maps.shape == (2, 96, 96)
    cache = MapCache(tmp_path / "c")
    compute_maps(make_detector("padim", **PADIM), fit, test, (96, 96), cache)
    cache.clear()
    assert not (tmp_path / "c").exists()


def test_an_intensity_mode_gets_its_own_ids_so_the_cache_never_mixes_them(tmp_path: Path) -> None:
    import cv2

    rng = np.random.default_rng(0)
    paths = []
    for i in range(2):
        paths.append(tmp_path / f"{i}.png")
        cv2.imwrite(str(paths[-1]), (rng.random((40, 40)) * 120).astype(np.uint8))
    plain, clahe = ImageSet.from_paths(paths, 32), ImageSet.from_paths(paths, 32, "clahe")
    assert len(set(plain.ids) | set(clahe.ids)) == 4 and all(
        c.startswith(p) for p, c in zip(plain.ids, clahe.ids, strict=True)
    )
    assert not np.allclose(plain.load([0, 1]), clahe.load([0, 1]))


def test_a_map_beyond_float16_or_nan_is_an_error_naming_detector_and_image(tiny: TinySet, tmp_path: Path) -> None:
    from segad.maps import MapError, check_maps, fit_detector, predict_maps

    det, _ = fit_detector(make_detector("padim", **PADIM), ImageSet.from_arrays(tiny.train), None)
    # A diverged fit (as a trainable detector's can be): the inverse covariance scaled past float16's range.
    det.inv_covariance_ = det.inv_covariance_ * 1e12
    images = ImageSet(("a", "b"), lambda idx: tiny.test[list(idx)], ("cell_0.png", "cell_1.png"))
    with pytest.raises(MapError, match=r"padim: the anomaly map of cell_0\.png has values beyond"):
        predict_maps(det, images, (96, 96), MapCache(tmp_path).entry(det, (96, 96), ["x"]))
    det.inv_covariance_ = det.inv_covariance_ * np.nan
    with pytest.raises(MapError, match=r"padim: the anomaly map of cell_0\.png has NaN or infinite"):
        predict_maps(det, images, (96, 96), None)
    assert not list(tmp_path.rglob("*.npz"))  # nothing of it was cached
    maps = np.zeros((3, 4, 4), np.float32)
    maps[2, 1, 1] = np.nan
    with pytest.raises(MapError, match=r"fastflow: the anomaly map of c\.png has NaN or infinite values"):
        check_maps("fastflow", maps, ["a.png", "b.png", "c.png"])


def test_no_cache_with_generated_defects_fits_each_detector_once(tiny_mvtec: Path) -> None:
    """``--no-cache --generated N`` used to fit every detector a second time for the generated images."""
    from segad.prepare import prepare
    from segad.train import parse_args

    cfg = parse_args(
        ["--data", str(tiny_mvtec), "--image-size", "64", "--shots", "2", "--generated", "3",
         "--seeds", "1", "--device", "cpu", "--detectors", "padim", "--no-cache", "--no-mlflow"]
    )  # fmt: skip
    prep = prepare(cfg)
    assert prep.maps["padim"].detector is prep.gen_maps["padim"].detector
    assert len(prep.gen_sources) == 3 and (prep.gen_sources < prep.n_hold).all()
