"""The final score judged on cross-fitted good images (segad.judging), with real detectors on real images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from detectors import make_detector
from segad.data.synthetic import SyntheticSpec, write_mvtec
from segad.judging import cross_fit, fold_of
from segad.prepare import prepare
from segad.train import main, parse_args

SMALL = SyntheticSpec(image_size=64, n_train=40, n_test_good=6, n_defects_per_type=2, seed=3)
BASE = ["--image-size", "64", "--shots", "4", "--seeds", "2", "--device", "cpu", "--no-mlflow"]
# Every patch in the memory bank: a fit image's own patches are found exactly, so in-sample it scores 0.
EXACT = ["--detectors", "patchcore", "--set", "patchcore.coreset_ratio=1.0"]


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("judging")
    write_mvtec(SMALL, root / "data")
    return root / "data"


@pytest.fixture(scope="module")
def prep(small: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch_module):
    monkeypatch_module.setenv("SEGAD_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    return prepare(parse_args(["--data", str(small), *BASE, *EXACT, "--judge-folds", "3"]))


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_folds_are_a_seeded_balanced_deal() -> None:
    f = fold_of(23, 5)
    assert np.array_equal(f, fold_of(23, 5))
    assert sorted(np.bincount(f)) == [4, 4, 5, 5, 5]
    assert not np.array_equal(f, np.arange(23) % 5)  # shuffled, not the file order


def test_every_fit_image_is_mapped_by_a_model_that_never_saw_it(prep) -> None:
    judge = prep.judge
    assert judge is not None and judge.folds == 3
    n_fit = len(prep.fit_set)
    full = prep.maps["patchcore"].detector.predict(prep.fit_set.load(range(n_fit)))
    oof = judge.good_scores["patchcore"]
    assert oof.shape == (n_fit,)
    # In-sample, its own patches are in the bank (distance ~0, up to rounding); out of fold, they are not.
    assert full.scores.max() < 0.05 * oof.min()
    assert judge.good_maps["patchcore"].shape == (n_fit, 64, 64)


def test_fold_scores_are_what_a_refit_without_the_fold_gives(prep) -> None:
    """Fold 1's model, refit here by hand: its maps of fold 1's fit images and its scores of every third
    judging image (i mod 3 == 1) are what the judge holds. Only the images that judge are mapped: the
    held-out good ones and every seed's shots, not the test images no seed trains on."""
    judge, n_fit = prep.judge, len(prep.fit_set)
    fold = fold_of(n_fit, 3)
    det = make_detector("patchcore", coreset_ratio=1.0, device="cpu")
    det.fit(prep.fit_set.load(np.flatnonzero(fold != 1).tolist()))
    inside = np.flatnonzero(fold == 1).tolist()
    out = det.predict(prep.fit_set.load(inside))
    assert np.allclose(judge.good_scores["patchcore"][inside], out.scores, rtol=1e-4, atol=1e-5)
    shots = np.unique(np.concatenate([sp.train_defects for sp in prep.splits]))
    assert np.array_equal(judge.judged, np.r_[np.arange(prep.n_hold), prep.n_hold + shots])
    assert len(judge.judged) < len(prep.score_set)
    mine = judge.judged[judge.judged % 3 == 1]
    scored = det.predict(prep.score_set.load(mine.tolist())).scores
    assert np.allclose(judge.scored_scores["patchcore"][judge.rows_of(mine)], scored, rtol=1e-4, atol=1e-5)
    # Another fold's model scores the others: they are not the full model's scores.
    assert not np.allclose(judge.scored_scores["patchcore"], prep.maps["patchcore"].scores[judge.judged])
    with pytest.raises(ValueError, match="does not judge"):
        judge.rows_of(np.setdiff1d(np.arange(len(prep.score_set)), judge.judged)[:1])


def test_a_run_judges_on_every_good_training_image(small: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SEGAD_CACHE_DIR", str(tmp_path / "cache"))
    args = ["--data", str(small), *BASE, "--set", "patchcore.coreset_ratio=0.25"]
    assert main([*args, "--summary-json", str(tmp_path / "on.json")]) == 0
    assert main([*args, "--judge-folds", "0", "--summary-json", str(tmp_path / "off.json")]) == 0
    on, off = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("on", "off"))
    n_train = SMALL.n_train
    n_hold = round(0.1 * n_train)
    assert on["judge_folds"] == 5 and off["judge_folds"] == 0  # PatchCore and PaDiM fit without training: on
    assert {s["judged_good"] for s in on["selection"]} == {n_train}  # held out + fit, out of fold
    assert {s["judged_good"] for s in off["selection"]} == {n_hold}
    # The same detectors, classifier and test sets: only the final score's evidence differs.
    for name in ("patchcore", "padim", "ensemble", "classifier"):
        assert on["methods"][name] == off["methods"][name]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--judge-folds", "1"], "--judge-folds must be 0 .* or at least 2, got 1"),
        (["--judge-folds", "-2"], "--judge-folds must be 0"),
        (["--judge-folds", "30"], "--judge-folds 30: the detectors fit on 36 good images, too few"),
        (["--judge-folds", "3", "--detectors", "patchcore,devnet"], "--judge-folds 3: only segad's own detectors"),
    ],
)
def test_bad_judge_folds_fail_before_any_work(small: Path, capsys, extra: list[str], message: str) -> None:
    assert main(["--data", str(small), *BASE, *extra]) == 2
    err = capsys.readouterr().err
    assert pytest.importorskip("re").search(message, err), err


def test_cross_fit_refuses_more_folds_than_images(prep) -> None:
    from segad.sources import FittedDetector, MapRequest

    few = prep.fit_set.subset([0, 1])
    request = MapRequest(few, prep.score_set, (), prep.gen_set, prep.size, None)
    source = FittedDetector("patchcore", make_detector("patchcore").config)
    with pytest.raises(ValueError, match="2 fit images cannot be dealt into 3 folds"):
        cross_fit({"patchcore": source}, request, 3, print)


def test_judging_is_on_by_default_only_where_a_refit_is_cheap(small: Path) -> None:
    from segad.prepare import judge_folds
    from segad.sources import FittedDetector

    def folds(detectors: str, n_fit: int = 100, *extra: str) -> int:
        cfg = parse_args(["--data", str(small), "--detectors", detectors, *extra])
        sources = {n: FittedDetector(n, c) for n, c in cfg.detector_configs().items()}
        return judge_folds(cfg, sources, n_fit)

    assert folds("patchcore,padim") == 5
    assert folds("patchcore,fastflow") == 0  # a refit would repeat FastFlow's training 5 times
    assert folds("patchcore,fastflow", 100, "--judge-folds", "3") == 3  # unless asked
    assert folds("patchcore,padim", 9) == 0  # too few fit images to leave a fold out
