"""A supervised model's maps as SegAD's input (``--detectors padim,devnet``): fit per seed, cross-fitted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from segad.baselines import fit_seed, generated_images, good_training_images
from segad.calibration import fold_ids
from segad.crossfit import SupervisedInput, cross_fit
from segad.prepare import prepare
from segad.supervised import DevNet
from segad.train import main, parse_args, run

SHORT = [f"--set=devnet.{o}" for o in ("epochs=2", "steps_per_epoch=3", "batch_size=8")]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _args(data: Path, *extra: str) -> list[str]:
    args = ["--data", str(data), "--image-size", "96", "--shots", "4", "--seeds", "1", "--device", "cpu"]
    return [*args, "--detectors", "devnet,padim", "--no-mlflow", *SHORT, *extra]


def test_each_training_row_is_scored_by_a_fit_without_its_fold(few_shot_mvtec: Path) -> None:
    """The held-out good images, the shots and the generated defects get maps from a model that never saw
    them (refit here, fold by fold: the same scores); the test images get the full fit's."""
    cfg = parse_args(_args(few_shot_mvtec, "--generated", "3"))
    prep = prepare(cfg)
    sp, n_hold = prep.splits[0], prep.n_hold
    normal, generated = good_training_images(prep, "all"), generated_images(prep)
    (_, full), *_ = fit_seed(cfg.supervised_configs(), prep, sp, normal, generated, unscored=["devnet"]).values()
    sm = cross_fit(full, prep, sp, normal, generated, folds=3)
    assert sm.folds == 3 and sm.maps.dtype == np.float16 and sm.maps.shape[1:] == (96, 96)

    shots = prep.score_set.load([n_hold + int(i) for i in sp.train_defects])
    held_out = normal[len(normal) - n_hold :]
    y = np.r_[np.zeros(n_hold), np.ones(len(shots) + len(generated))].astype(int)
    groups = np.r_[np.arange(n_hold), n_hold + np.arange(len(shots)), prep.gen_sources]
    fold = fold_ids(y, groups, 3, seed=sp.seed)
    good_f, shot_f, gen_f = fold[:n_hold], fold[n_hold : n_hold + len(shots)], fold[n_hold + len(shots) :]
    rows = np.concatenate([held_out, shots])
    expected = np.empty(len(rows), np.float32)
    for f in range(3):
        model = DevNet(full.config).fit(
            np.concatenate([normal[: len(normal) - n_hold], held_out[good_f != f]]),
            np.concatenate([shots[shot_f != f], generated[gen_f != f]]),
        )
        here = np.r_[good_f, shot_f] == f
        expected[here] = model.decision_function(rows[here])
        if (gen_f == f).any():
            np.testing.assert_allclose(
                sm.gen_scores[gen_f == f], model.decision_function(generated[gen_f == f]), atol=1e-5
            )
    n_rows = len(rows)
    np.testing.assert_allclose(sm.scores[:n_rows], expected, atol=1e-5)
    assert not np.allclose(sm.scores[:n_rows], full.decision_function(rows), atol=1e-3)  # in-sample would differ
    test = prep.score_set.load([n_hold + int(i) for i in sp.test])
    np.testing.assert_allclose(sm.scores[n_rows:], full.decision_function(test), atol=1e-5)
    assert np.array_equal(sm.rows, np.r_[np.arange(n_hold), n_hold + sp.train_defects, n_hold + sp.test])


def test_a_stacked_input_is_a_feature_a_row_and_part_of_the_saved_model(few_shot_mvtec: Path, tmp_path: Path) -> None:
    from segad.pipeline import SegadPipeline

    cfg = parse_args(_args(few_shot_mvtec, "--summary-json", str(tmp_path / "s.json")))
    result = run(cfg)
    names = result.pipeline.feature_names
    assert names[0].startswith("padim/") and "devnet/seg0/q995" in names  # one-class first, whatever the order
    assert names[-2:] == ["padim/score", "devnet/score"]
    assert {m.name for m in result.methods} >= {"padim", "devnet", "ensemble", "segad"}
    (baseline,) = result.baselines
    assert baseline.name == "devnet" and baseline.fits[0].fold_seconds > 0
    devnet = next(m for m in result.methods if m.name == "devnet")
    assert devnet.per_seed[0].auroc == pytest.approx(
        next(m for m in result.methods if m.name == baseline.row).per_seed[0].auroc
    )
    # Saved and loaded, the model recomputes the devnet maps and scores the first seed's test images as the run did.
    model = SegadPipeline.load(result.pipeline.save(tmp_path / "model"), device="cpu")
    assert isinstance(model.detectors[1], SupervisedInput)
    test = [result.dataset_table.test[i] for i in result.first_seed_test]
    out = model.predict([s.image_path for s in test], [s.segment_path for s in test])
    np.testing.assert_allclose(out.scores, result.first_seed_scores["segad"], rtol=0, atol=1e-5)
    _, _, det_scores = model.features(model.preprocess([s.image_path for s in test]), [s.segment_path for s in test])
    np.testing.assert_allclose(det_scores["devnet"], result.first_seed_scores["devnet"], atol=1e-5)


def test_cross_fitted_inputs_repeat_and_are_summarised_and_logged(few_shot_mvtec: Path, tmp_path: Path) -> None:
    import mlflow

    a, b = tmp_path / "a.json", tmp_path / "b.json"
    for path, tracked in ((a, ["--experiment", "stacked"]), (b, ["--no-mlflow"])):
        args = [
            a
            for a in _args(few_shot_mvtec, "--summary-json", str(path), "--model-dir", str(tmp_path / "m"))
            if a != "--no-mlflow"
        ]
        assert main([*args, *tracked]) == 0
    first, again = (json.loads(p.read_text()) for p in (a, b))
    assert first["methods"]["segad"]["per_seed"] == again["methods"]["segad"]["per_seed"]
    assert first["supervised"]["devnet"]["fold_fit_seconds"][0] > 0
    assert first["config"]["stack_folds"] == 3
    runs = mlflow.search_runs(experiment_names=["stacked"])
    devnet = runs[runs["tags.mlflow.runName"] == "devnet"].iloc[0]
    assert devnet["params.stacked"] == "True" and devnet["metrics.fold_fit_seconds_mean"] > 0
    parent = runs[runs["tags.mlflow.runName"] != "devnet"]
    assert (parent["params.stack_folds"] == "3").any() and (parent["params.devnet.epochs"] == "2").any()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--detectors", "padim,classifier"], "classifier gives one score per image, no anomaly map"),
        (["--detectors", "padim,devnet", "--stack-folds", "1"], "--stack-folds must be at least 2"),
        (["--detectors", "padim,devnet,padim"], "a detector is named twice"),
        (["--detectors", "padim,devnet", "--shots", "1"], "it needs --shots >= 2 and 2 held-out good images"),
        (["--detectors", "devnet"], "SegAD stacks one-class detectors' maps, with a supervised model's beside"),
        (["--detectors", "padim,devnt"], "supervised, stacked per seed: devnet, dra"),
    ],
)
def test_bad_stacking_options_are_named(few_shot_mvtec: Path, capsys, extra: list[str], message: str) -> None:
    args = ["--data", str(few_shot_mvtec), "--image-size", "96", "--seeds", "1", "--device", "cpu", "--no-mlflow"]
    assert main([*args, *SHORT, *extra]) == 2
    assert message in capsys.readouterr().err
