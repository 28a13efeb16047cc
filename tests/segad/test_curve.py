"""segad.curve: the protocol at several shot counts, one MLflow run holding the learning curve."""

from __future__ import annotations

import csv
from pathlib import Path

import mlflow
import pytest

from detectors.errors import InputError
from segad.curve import main, parse_shots


def test_a_curve_is_one_run_with_a_point_per_shot_count(few_shot_mvtec: Path, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["--data", str(few_shot_mvtec), "--image-size", "96", "--seeds", "2", "--device", "cpu"]
    args += [
        "--segments",
        "whole",
        "--set",
        "patchcore.coreset_ratio=0.25",
        "--generated",
        "4",
        "--classifier",
        "logreg",
    ]
    assert main([*args, "--shots", "4,0", "--tracking-uri", uri, "--experiment", "curve"]) == 0

    client = mlflow.MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("curve").experiment_id])
    assert run.info.status == "FINISHED"  # named, as segad.train's runs, for what ran (the dataset resolved)
    assert run.info.run_name == "few_shot0-widget · patchcore+padim · whole · logreg · shots curve 0,4"
    methods = ("patchcore", "padim", "ensemble", "segad")
    for m in methods:  # MLflow's own chart of a metric against its step is the curve
        history = client.get_metric_history(run.info.run_id, f"{m}.auroc_mean")
        assert [h.step for h in history] == [0, 4] and all(0.0 <= h.value <= 1.0 for h in history)
    # More shots leave fewer defects to test on (15 in all; 4 drawn per seed).
    defects = client.get_metric_history(run.info.run_id, "test_defects")
    assert [(h.step, h.value) for h in defects] == [(0, 15.0), (4, 11.0)]
    assert {"shots_curve.png", "shots_curve.csv"} <= {a.path for a in client.list_artifacts(run.info.run_id)}

    with Path("outputs/curves/few_shot0-widget/shots_curve.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {(int(r["shots"]), r["method"]) for r in rows} >= {(k, m) for k in (0, 4) for m in methods}
    segad4 = next(r for r in rows if r["shots"] == "4" and r["method"] == "segad")
    assert float(segad4["auroc_mean"]) == pytest.approx(
        client.get_metric_history(run.info.run_id, "segad.auroc_mean")[1].value
    )


def test_shots_are_checked_before_any_work(few_shot_mvtec: Path, capsys) -> None:
    assert parse_shots("20,0, 5") == [0, 5, 20]
    for bad in ("", "5,x", "-1,5"):
        with pytest.raises(InputError, match="--shots"):
            parse_shots(bad)
    assert main(["--data", str(few_shot_mvtec), "--shots", "0,5", "--no-mlflow"]) == 2
    assert "--shots 0 trains SegAD on generated defects alone" in capsys.readouterr().err
