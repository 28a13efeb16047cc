"""Maps computed elsewhere, end to end: train on them next to ours, save, predict (Python, CLI, pyfunc), tune."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from detectors.errors import InputError
from segad.data.synthetic import SyntheticSpec, write_mvtec
from segad.mapfolder import MapFolderError
from segad.pipeline import SegadPipeline
from segad.prepare import prepare
from segad.train import parse_args, run

SMALL = SyntheticSpec(image_size=96, n_train=60, n_test_good=8, n_defects_per_type=3, seed=7)
BASE = ["--image-size", "96", "--shots", "5", "--seeds", "2", "--device", "cpu", "--no-mlflow"]


def export(prep, name: str, root: Path, scores: bool = True, shape: tuple[int, int] | None = None) -> Path:
    """Write one of our detector's maps of the held-out good and test images in the mirror layout, as
    another tool would (optionally at another size, without scores)."""
    import cv2

    dm = prep.maps[name]
    samples = [*prep.fs.holdout_good, *prep.ds.test]
    rows = []
    for s, m, score in zip(samples, dm.maps, dm.scores, strict=True):
        target = root / str(s.split) / s.defect_type / f"{s.stem}.npy"
        target.parent.mkdir(parents=True, exist_ok=True)
        m = m.astype(np.float32)
        np.save(target, m if shape is None else cv2.resize(m, shape[::-1], interpolation=cv2.INTER_LINEAR))
        rows.append((f"{s.split}/{s.defect_type}/{s.image_path.name}", repr(float(score))))
    if scores:
        with (root / "scores.csv").open("w", newline="") as f:
            csv.writer(f).writerows([("image", "score"), *rows])
    return root


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sources")
    write_mvtec(SMALL, root / "data")
    return root / "data"


@pytest.fixture(scope="module")
def padim_run(small: Path):
    return run(parse_args(["--data", str(small), "--detectors", "padim,patchcore", *BASE]))


@pytest.fixture(scope="module")
def exported(small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    prep = prepare(parse_args(["--data", str(small), "--detectors", "padim", *BASE]))
    return export(prep, "padim", tmp_path_factory.mktemp("maps") / "padim_maps")


@pytest.fixture(scope="module")
def maps_run(small: Path, exported: Path):
    return run(parse_args(["--data", str(small), "--detectors", "ext,patchcore", "--maps", f"ext={exported}", *BASE]))


def test_stacking_a_folder_equals_stacking_the_detector_that_made_it(padim_run, maps_run) -> None:
    """The folder holds padim's maps and scores of the same held-out good images: every row is the same."""
    ours = {m.name: m for m in padim_run.methods}
    theirs = {m.name: m for m in maps_run.methods}
    assert [r.auroc for r in theirs["ext"].per_seed] == [r.auroc for r in ours["padim"].per_seed]
    for name in ("patchcore", "ensemble", "segad", "classifier"):
        assert [r.auroc for r in theirs[name].per_seed] == [r.auroc for r in ours[name].per_seed], name
    assert maps_run.pipeline.given_maps == ["ext"]


def test_a_saved_model_needs_the_maps_and_scores_what_the_run_reported(maps_run, exported: Path, tmp_path) -> None:
    model = SegadPipeline.load(maps_run.pipeline.save(tmp_path / "model"), device="cpu")
    assert model.given_maps == ["ext"] and not (tmp_path / "model" / "detector_ext.safetensors").exists()
    test = [maps_run.dataset_table.test[i] for i in maps_run.first_seed_test]
    files = [s.image_path for s in test]
    with pytest.raises(InputError, match="maps computed elsewhere \\(ext\\)"):
        model.predict(files, [s.segment_path for s in test])
    map_files = [exported / str(s.split) / s.defect_type / f"{s.stem}.npy" for s in test]
    with pytest.raises(InputError, match="ext_score"):  # trained on the folder's scores: they are needed too
        model.predict(files, [s.segment_path for s in test], maps={"ext": map_files})
    with (exported / "scores.csv").open() as f:
        given = {r["image"]: float(r["score"]) for r in csv.DictReader(f)}
    scores = [given[f"{s.split}/{s.defect_type}/{s.image_path.name}"] for s in test]
    out = model.predict(files, [s.segment_path for s in test], maps={"ext": map_files}, map_scores={"ext": scores})
    np.testing.assert_allclose(out.scores, maps_run.first_seed_scores["segad"], rtol=0, atol=1e-4)


def test_the_predict_command_and_the_pyfunc_take_the_maps(small: Path, exported: Path, tmp_path: Path) -> None:
    """Whole-image segments (the CLI refuses folder segments); maps at twice the size, no scores file."""
    import pandas as pd

    from segad.mlflow_model import SegadPyfunc
    from segad.predict import main as predict_main

    half = export(prepare(parse_args(["--data", str(small), "--detectors", "padim", *BASE])), "padim",
                  tmp_path / "big_maps", scores=False, shape=(192, 192))  # fmt: skip
    cfg = parse_args(["--data", str(small), "--detectors", "padim,ext", "--maps", f"ext={half}",
                      "--segments", "whole", "--model-dir", str(tmp_path / "model"), *BASE])  # fmt: skip
    result = run(cfg)
    model_dir = result.pipeline.save(tmp_path / "model")
    # The maps are resized at predict time as at training: the classifier's margins on the first seed's test set.
    model = SegadPipeline.load(model_dir, device="cpu")
    test = [result.dataset_table.test[i] for i in result.first_seed_test]
    given = {"ext": ([half / str(s.split) / s.defect_type / f"{s.stem}.npy" for s in test], None)}
    X, _, _ = model.features(model.preprocess([s.image_path for s in test]), given=given)
    np.testing.assert_allclose(model.classifier.decision_function(X), result.first_seed_scores["classifier"], atol=1e-4)
    images = next(small.glob("*/test"))
    out = tmp_path / "out"
    assert predict_main(["--model", str(model_dir), "--images", str(images), "--out", str(out)]) == 2
    assert predict_main(["--model", str(model_dir), "--images", str(images), "--out", str(out),
                         "--maps", f"ext={half / 'test'}"]) == 0  # fmt: skip
    with (out / "scores.csv").open() as f:
        rows = {Path(r["file"]): float(r["score"]) for r in csv.DictReader(f)}
    files = sorted(rows)
    map_files = [half / "test" / p.relative_to(images).with_suffix(".npy") for p in files]
    direct = SegadPipeline.load(model_dir, device="cpu").predict(files, maps={"ext": map_files})
    # 1e-4, not exact: one thread's float32 detector scores move in the 7th digit with the batch, and the
    # final score's z-scoring scales that up.
    np.testing.assert_allclose([rows[p] for p in files], direct.scores, rtol=0, atol=1e-4)
    pyfunc = SegadPyfunc()
    pyfunc.pipeline = SegadPipeline.load(model_dir, device="cpu")
    with pytest.raises(InputError, match="ext_map column"):
        pyfunc.predict(None, pd.DataFrame({"image_path": [str(p) for p in files]}))
    frame = pd.DataFrame({"image_path": [str(p) for p in files], "ext_map": [str(p) for p in map_files]})
    np.testing.assert_allclose(pyfunc.predict(None, frame)["score"], direct.scores, rtol=0, atol=1e-4)


def test_bad_folders_stop_the_run_before_any_fit(small: Path, exported: Path, tmp_path: Path, monkeypatch) -> None:
    """Missing and NaN maps are listed together, and the cache gets no fit (padim is not fit first)."""
    import shutil

    cache = tmp_path / "cache"
    monkeypatch.setenv("SEGAD_CACHE_DIR", str(cache))
    broken = tmp_path / "broken"
    shutil.copytree(exported, broken)
    crack = sorted((broken / "test").glob("*/*.npy"))
    crack[0].unlink()
    np.save(crack[1], np.full((96, 96), np.nan, np.float32))
    cfg = parse_args(["--data", str(small), "--detectors", "padim,ext", "--maps", f"ext={broken}", *BASE])
    with pytest.raises(MapFolderError) as e:
        prepare(cfg)
    assert "2 of" in str(e.value) and crack[0].stem in str(e.value) and "NaN" in str(e.value)
    assert not list(cache.rglob("*.safetensors"))


def test_maps_decide_the_held_out_good_images(small: Path, exported: Path, tmp_path: Path) -> None:
    import shutil

    prep = prepare(parse_args(["--data", str(small), "--detectors", "padim,ext", "--maps", f"ext={exported}", *BASE]))
    held = {p.stem for p in (exported / "train" / "good").glob("*.npy")}
    assert {s.stem for s in prep.fs.holdout_good} == held and len(held) == 6
    assert not held & {s.stem for s in prep.fs.fit_good}
    # Two folders must agree on them ...
    other = tmp_path / "other"
    shutil.copytree(exported, other)
    extra = next(s for s in prep.fs.fit_good)
    np.save(other / "train" / "good" / f"{extra.stem}.npy", np.zeros((96, 96), np.float32))
    two = ["--maps", f"ext={exported}", "--maps", f"b={other}"]
    with pytest.raises(InputError, match="different good training images"):
        prepare(parse_args(["--data", str(small), "--detectors", "padim", *two, *BASE]))
    # ... and hold at least one out, leaving one for segad's detectors.
    shutil.rmtree(other / "train")
    with pytest.raises(InputError, match="no maps of good training images"):
        prepare(parse_args(["--data", str(small), "--maps", f"b={other}", *BASE]))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--maps", "padim=DIR"], "names one of segad's own models"),
        (["--maps", "ext=MAPS", "--generated", "5"], "drop --generated"),
        (["--maps", "ext=MAPS", "--set", "ext.k=1"], "come from a folder"),
        (["--maps", "ext=/no/such/dir"], "no such folder"),
        (["--detectors", "nope"], "--maps nope=DIR"),
    ],
)
def test_bad_maps_options_fail_with_what_to_do(small: Path, exported: Path, extra: list[str], message: str) -> None:
    extra = [e.replace("MAPS", str(exported)) for e in extra]
    with pytest.raises(InputError, match=message):
        prepare(parse_args(["--data", str(small), *BASE, *extra]))


def test_tuning_chooses_among_folders_and_the_best_run_keeps_only_its_choice(exported: Path) -> None:
    from segad.tune import _subsets, best_run_config

    cfg = parse_args(["--maps", f"ext={exported}", "--detectors", "padim"])
    assert cfg.detector_names == ["padim", "ext"]
    assert ("ext",) in _subsets(cfg.detector_names)
    assert best_run_config(cfg, {"detectors": "padim"}, "s").detector_names == ["padim"]
    best = best_run_config(cfg, {"detectors": "ext"}, "s")
    assert best.detector_names == ["ext"] and best.map_folders == {"ext": exported}
