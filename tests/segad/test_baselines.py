"""Supervised baselines in segad.train: fit per seed on the seed's shots, scored on its test set, logged and saved."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest

from segad.data import load_dataset
from segad.metrics import image_auroc
from segad.protocol import seed_split, seeds
from segad.supervised import DRA, DevNet, FineTunedClassifier
from segad.train import main

# CPU-sized baselines: 2 epochs x 3 steps of 8 images at 96 px.
METHODS = ("devnet", "dra", "classifier")
SHORT = [f"--set={m}.{o}" for m in METHODS for o in ("epochs=2", "steps_per_epoch=3", "batch_size=8")]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _args(data: Path, tmp: Path, *extra: str) -> list[str]:
    args = ["--data", str(data), "--image-size", "96", "--shots", "4", "--seeds", "2", "--device", "cpu"]
    args += ["--set", "patchcore.coreset_ratio=0.25", "--model-dir", str(tmp / "model")]
    args += ["--supervised", ",".join(METHODS)]
    return [*args, *SHORT, "--summary-json", str(tmp / "summary.json"), *extra]


def test_each_baseline_is_a_row_fit_per_seed_logged_and_saved(few_shot_mvtec: Path, tmp_path: Path, capsys) -> None:
    assert main(_args(few_shot_mvtec, tmp_path)) == 0
    printed = capsys.readouterr().out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["methods"]["classifier"] != summary["methods"]["fine-tuned classifier"]
    for name, model_class in (("devnet", DevNet), ("dra", DRA), ("classifier", FineTunedClassifier)):
        assert model_class.row in printed  # a row of the printed table
        _check_baseline(few_shot_mvtec, tmp_path, summary, name, model_class)


def _check_baseline(few_shot_mvtec: Path, tmp_path: Path, summary: dict, name: str, model_class) -> None:
    row = summary["methods"][model_class.row]  # "classifier" is SegAD's own classifier's row
    assert [r["seed"] for r in row["per_seed"]] == [333, 576]
    sup = summary["supervised"][name]
    # Every good training image (the default), and each seed's 4 shots.
    assert sup["good_images"] == "all" and sup["n_good"] == 40 and sup["n_defects"] == [4, 4]
    assert sup["config"]["epochs"] == 2 and all(s > 0 for s in sup["fit_seconds"])

    # The saved model is the first seed's: reloaded, it scores that seed's test set to the AUROC reported.
    ds = load_dataset(few_shot_mvtec)
    sp = seed_split(ds, 4, seeds(1)[0])
    from segad.data.images import load_images

    test = [ds.test[i] for i in sp.test]
    model = model_class.load(tmp_path / "model" / "baselines" / f"{name}.safetensors", device="cpu")
    scores = model.decision_function(load_images([s.image_path for s in test], (96, 96)))
    labels = np.array([s.label for s in test])
    assert image_auroc(labels, scores) == pytest.approx(row["per_seed"][0]["auroc"], abs=1e-9)
    assert model.config.seed == 333  # trained with its split's seed

    # MLflow: a nested run with per-seed metrics, every seed's loss curve and the model file.
    client = mlflow.MlflowClient()
    runs = mlflow.search_runs(search_all_experiments=True, filter_string=f"tags.mlflow.runName = '{model_class.row}'")
    assert len(runs) == 1
    run = client.get_run(runs.run_id[0])
    assert run.data.params["good_images"] == "all" and run.data.params["epochs"] == "2"
    assert run.data.metrics["auroc_mean"] == pytest.approx(row["auroc_mean"])
    for seed in (333, 576):
        assert len(client.get_metric_history(run.info.run_id, f"loss_seed_{seed}")) == 6  # 2 epochs x 3 steps
    assert f"{name}.safetensors" in [a.path for a in client.list_artifacts(run.info.run_id)]
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.data.metrics[f"{model_class.row}.auroc_mean"] == pytest.approx(row["auroc_mean"])


def test_seeded_fits_repeat_and_holdout_trains_on_the_held_out_good_only(few_shot_mvtec: Path, tmp_path: Path) -> None:
    first, again = tmp_path / "a", tmp_path / "b"
    extra = ("--no-mlflow", "--supervised-good", "holdout", "--seeds", "1", "--generated", "2")
    assert main(_args(few_shot_mvtec, first, *extra)) == 0
    assert main(_args(few_shot_mvtec, again, *extra)) == 0
    a, b = (json.loads((d / "summary.json").read_text()) for d in (first, again))
    assert a["supervised"]["devnet"]["n_good"] == 4  # 10% of 40 held out
    assert a["supervised"]["devnet"]["n_defects"] == [6]  # the seed's 4 shots and the 2 generated defects
    assert a["methods"]["devnet"]["per_seed"] == b["methods"]["devnet"]["per_seed"]
    assert a["supervised"]["devnet"]["final_loss"] == b["supervised"]["devnet"]["final_loss"]
