"""A real MLflow store: train into it, read everything back, load the registered model, serve it."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from segad.data.synthetic import DEFECT_TYPES, SyntheticSpec, write_mvtec
from segad.train import main
from tests.postgres import free_port

SPEC = SyntheticSpec(image_size=96, n_train=80, n_test_good=8, n_defects_per_type=3, seed=5)
ARGS = ["--image-size", "96", "--shots", "5", "--seeds", "2", "--device", "cpu", "--segments", "whole"]
ARGS += [
    "--set",
    "patchcore.coreset_ratio=0.25",
    "--detectors",
    "patchcore,padim,fastflow",
    "--set",
    "fastflow.epochs=2",
]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    import mlflow

    root = tmp_path_factory.mktemp("tracking")
    write_mvtec(SPEC, root / "data")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mp = pytest.MonkeyPatch()
    mp.chdir(root)  # MLflow's default artifact root is ./mlruns
    mp.setenv("SEGAD_CACHE_DIR", str(root / "cache"))
    args = ["--data", str(root / "data"), *ARGS, "--tracking-uri", uri, "--model-dir", str(root / "model")]
    stderr = io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stderr(stderr):
        warnings.simplefilter("always")
        assert main([*args, "--experiment", "tiny"]) == 0
    mlflow.set_tracking_uri(uri)
    yield root, uri, mlflow.MlflowClient(uri), (caught, stderr.getvalue())
    mp.undo()


def _runs(client, experiment: str = "tiny"):
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id])


def test_parent_and_nested_runs_with_params_metrics_and_tags(store) -> None:
    _, _, client, _ = store
    runs = _runs(client)
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert parent.info.status == "FINISHED" and set(children) == {"patchcore", "padim", "fastflow"}
    p = parent.data.params
    assert p["detectors"] == "patchcore,padim,fastflow" and p["shots"] == "5" and p["segments"] == "whole"
    assert p["patchcore.coreset_ratio"] == "0.25" and p["classifier.num_parallel_tree"] == "200"
    assert {"segad.auroc_mean", "segad.fpr95_std", "ensemble.auroc_mean"} <= set(parent.data.metrics)
    assert {"deploy.fpr", "deploy.tpr", "deploy.target_fpr", "deploy.threshold"} <= set(parent.data.metrics)
    assert 0.0 <= parent.data.metrics["deploy.fpr"] <= 1.0 and parent.data.metrics["deploy.target_fpr"] == 0.01
    history = client.get_metric_history(parent.info.run_id, "segad.auroc")
    assert [m.step for m in history] == [0, 1]
    assert parent.data.tags["device"] == "cpu" and "torch" in parent.data.tags and "segad.version" in parent.data.tags
    for child in children.values():
        m = child.data.metrics
        assert {"auroc_mean", "fpr95_mean", "ap_all_test", "pixel_auroc", "pixel_ap", "aupro_0.3", "pl"} <= set(m)
        assert 0.5 < m["pixel_auroc"] <= 1.0 and "fit_seconds" in m
        assert child.data.params["detector"] == child.info.run_name
    # A trainable detector's training: time, peak memory, and the loss curve as a metric history.
    flow = children["fastflow"]
    assert flow.data.metrics["train_seconds"] > 0 and flow.data.metrics["train_peak_memory_mib"] > 0
    curve = client.get_metric_history(flow.info.run_id, "loss_train")
    assert len(curve) == 10 and curve[-1].value < curve[0].value  # 2 epochs of ceil(72 / 16) steps


def test_the_ui_opens_on_named_runs_with_their_dataset(store) -> None:
    from segad.tracking import EXPERIMENT_KIND_TAG, MODEL_TRAINING

    root, _, client, _ = store
    exp = client.get_experiment_by_name("tiny")
    assert exp.tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING  # MLflow 3's UI: the runs table, not GenAI traces
    parent = next(r for r in _runs(client) if "mlflow.parentRunId" not in r.data.tags)
    assert parent.info.run_name == "data-widget · patchcore+padim+fastflow · whole · brf · 5 shots"
    [ds_input] = parent.inputs.dataset_inputs
    ds = ds_input.dataset
    assert ds.name == "data/widget" and json.loads(ds.source) == {"uri": str(root / "data" / "widget")}
    counts = json.loads(ds.profile)
    n_test = SPEC.n_test_good + len(DEFECT_TYPES) * SPEC.n_defects_per_type
    assert counts["train/good"] == SPEC.n_train and counts["test/good"] == SPEC.n_test_good
    assert counts["images"] == SPEC.n_train + n_test and counts["test/scratch"] == SPEC.n_defects_per_type
    assert len(ds.digest) == 16 and [t.value for t in ds_input.tags] == ["train"]


def test_logging_the_model_is_quiet(store) -> None:
    *_, (caught, stderr) = store
    assert not [w for w in caught if "type hint" in str(w.message)], [str(w.message) for w in caught]
    assert "Downloading artifacts" not in stderr


def test_artifacts_and_summary(store) -> None:
    _, _, client, _ = store
    parent = next(r for r in _runs(client) if "mlflow.parentRunId" not in r.data.tags)
    charts = {a.path for a in client.list_artifacts(parent.info.run_id, "charts")}
    assert {"charts/roc_curves.png", "charts/score_histograms.png", "charts/feature_importances.png"} <= charts
    assert "charts/overlays.png" in charts
    # Every missed defect and false alarm of the saved model, with the reasons for its score.
    table = Path(client.download_artifacts(parent.info.run_id, "charts/reasons.csv")).read_text().splitlines()
    assert table[0] == "image,defect_type,kind,score,threshold,reason_1,reason_2,reason_3"
    dep = parent.data.metrics
    assert all(row.split(",")[2] in ("missed defect", "false alarm") for row in table[1:])
    assert dep["deploy.fpr"] > 0 or not any(",false alarm," in row for row in table[1:])
    local = client.download_artifacts(parent.info.run_id, "summary.json")
    summary = json.loads(Path(local).read_text())
    assert set(summary["methods"]) == {"patchcore", "padim", "fastflow", "ensemble", "segad", "classifier"}
    assert parent.data.tags["segad.final_score"] == summary["selection"][0]["chosen"]
    weights = summary["selection"][0]["base_weights"]  # the saved score's share of each detector
    assert sum(weights.values()) == pytest.approx(1.0) and set(weights) <= {"patchcore", "padim", "fastflow"}
    assert parent.data.tags["segad.base_weights"] == ", ".join(f"{d} {a:.2f}" for d, a in weights.items())
    assert "classifier.auroc_mean" in parent.data.metrics


def test_registered_model_loads_as_pyfunc_and_scores(store) -> None:
    import mlflow

    root, _, client, _ = store
    versions = client.search_model_versions("name='segad-data-widget'")
    assert [int(v.version) for v in versions] == [1]
    model = mlflow.pyfunc.load_model("models:/segad-data-widget/1")
    files = sorted((root / "data" / "widget" / "test").rglob("*.png"))
    out = model.predict(pd.DataFrame({"image_path": [str(f) for f in files] + [str(root / "missing.png")]}))
    assert np.isfinite(out["score"][:-1]).all() and np.isnan(out["score"].iloc[-1])
    assert "does not exist" in out["error"].iloc[-1]
    assert out["decision"].iloc[-1] is pd.NA and out["decision"][:-1].notna().all()  # unknown, never "good"
    bad = out["score"][:-1][[f.parent.name != "good" for f in files]].mean()
    assert bad > out["score"][:-1][[f.parent.name == "good" for f in files]].mean()
    # A plain list of paths, and raw images as numpy arrays (one, a list, an (N, H, W, C) stack), score the same,
    # to float32 rounding: a batch of one computes its distances in another order than a batch of many.
    from segad.data.images import read_rgb

    by_list = model.predict([str(f) for f in files[:3]])
    np.testing.assert_allclose(by_list["score"], out["score"][:3], rtol=1e-6, atol=1e-6)
    raw = [(read_rgb(f) * 255).round().astype(np.uint8) for f in files[:3]]
    for arrays in (raw, np.stack(raw)):
        np.testing.assert_allclose(model.predict(arrays)["score"], out["score"][:3], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(model.predict(raw[0])["score"], out["score"][:1], rtol=1e-6, atol=1e-6)


def test_predict_cli_writes_scores_and_overlays_and_skips_unreadable(store, tmp_path: Path) -> None:
    from segad.predict import main as predict

    root, uri, _, _ = store
    images = tmp_path / "in"
    shutil.copytree(root / "data" / "widget" / "test" / "scratch", images / "scratch")
    (images / "broken.png").write_bytes(b"not a png")
    for model in ("models:/segad-data-widget/1", str(root / "model")):
        out = tmp_path / "out" / model.replace(":", "_").replace("/", "_")
        args = ["--model", model, "--images", str(images), "--out", str(out), "--tracking-uri", uri]
        assert predict([*args, "--suggest", "2"]) == 0
        rows = list(csv.DictReader((out / "scores.csv").open()))
        # The two to label next, ranked: scored images only, each with what drove its score.
        with (out / "suggest.csv").open() as f:
            picks = list(csv.DictReader(f))
        assert [r["rank"] for r in picks] == ["1", "2"] and {r["file"] for r in picks} <= {r["file"] for r in rows}
        assert all(float(r["distance"]) == pytest.approx(abs(float(r["score"]) - float(r["threshold"]))) for r in picks)
        assert len(rows) == 4 and sum(1 for r in rows if r["error"]) == 1
        # Why: the three largest shares of each flagged score, per detector and segment (segad.explain).
        flagged = [r for r in rows if r["decision"] == "True"]
        assert flagged and all(r["reasons"] for r in flagged)
        assert all(
            part.split()[0] in ("patchcore", "padim", "fastflow") for r in flagged for part in r["reasons"].split("; ")
        )
        assert len(list((out / "overlays").rglob("*.png"))) == 3
    # Overlays are coloured on each detector's scale, kept with the model from its held-out good images.
    from segad.pipeline import SegadPipeline

    scales = SegadPipeline.load(root / "model").map_scales
    assert set(scales) == {"patchcore", "padim", "fastflow"}
    assert all(s.low < s.threshold <= s.high for s in scales.values())


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("models:/segad-data-widget/99", "MLflow cannot find it"),
        ("models:/no-such-model/1", "MLflow cannot find it"),
        ("runs:/0123456789abcdef/model", "MLflow cannot find it"),
        ("http://127.0.0.1:9/model", "not a model URI .* give --tracking-uri URL with --model models:/NAME/VERSION"),
        ("ftp://host/model", "not a model URI"),
    ],
)
def test_predict_names_a_model_uri_it_cannot_load(store, tmp_path: Path, capsys, uri: str, message: str) -> None:
    import re

    from segad.predict import main as predict

    root, tracking, _, _ = store
    images = root / "data" / "widget" / "test" / "scratch"
    assert predict(["--model", uri, "--images", str(images), "--out", str(tmp_path), "--tracking-uri", tracking]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --model " + uri) and re.search(message, err) and "Traceback" not in err, err


def test_images_unlike_the_training_images_are_scored_with_a_warning(store, tmp_path: Path, capsys) -> None:
    """The model keeps its training images' native sizes (96x96 here) and notes images of another aspect or scale."""
    import cv2
    import mlflow

    from segad.predict import main as predict

    root, uri, _, _ = store
    assert json.loads((root / "model" / "segad_pipeline.json").read_text())["source_shape"] == {
        "height": [96, 96],
        "width": [96, 96],
        "aspect": [1.0, 1.0],
    }
    picture = cv2.imread(str(sorted((root / "data" / "widget" / "test" / "good").glob("*.png"))[0]))
    images = tmp_path / "in"
    images.mkdir()
    cv2.imwrite(str(images / "same.png"), picture)
    cv2.imwrite(str(images / "wide.png"), cv2.resize(picture, (192, 96)))
    cv2.imwrite(str(images / "large.png"), cv2.resize(picture, (384, 384)))
    assert predict(["--model", str(root / "model"), "--images", str(images), "--out", str(tmp_path / "out")]) == 0
    rows = {Path(r["file"]).name: r for r in csv.DictReader((tmp_path / "out" / "scores.csv").open())}
    assert rows["same.png"]["warning"] == "" and all(rows[n]["score"] for n in rows)
    assert "aspect 2.00 (training 1.00)" in rows["wide.png"]["warning"]
    assert "height 384 px (training 96)" in rows["large.png"]["warning"]
    assert "warning: 2 of 3 images are unlike the training images" in capsys.readouterr().err
    mlflow.set_tracking_uri(uri)
    out = mlflow.pyfunc.load_model("models:/segad-data-widget/1").predict([str(images / n) for n in sorted(rows)])
    assert [bool(w) for w in out["warning"]] == [True, False, True]  # large, same, wide


def test_a_failing_run_is_marked_failed_with_the_error(store, tmp_path: Path) -> None:
    root, uri, client, _ = store
    data = tmp_path / "data"
    shutil.copytree(root / "data", data)
    (data / "widget" / "test" / "good" / "000.png").write_bytes(b"broken")
    args = ["--data", str(data), *ARGS, "--tracking-uri", uri, "--experiment", "broken", "--no-cache"]
    assert main(args) == 2  # the error is printed; the run records it
    run = _runs(client, "broken")[0]
    assert run.info.status == "FAILED" and "000.png" in run.data.tags["error"]


@pytest.fixture
def backend_store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The tracking server's backend store: a database on a live PostgreSQL, as a team runs it (CI always
    has one); a SQLite file where PostgreSQL is not installed."""
    from tests.postgres import NoPostgres, create_database, postgres_bin

    try:
        postgres_bin()
    except NoPostgres:
        if os.environ.get("CI"):
            raise
        return f"sqlite:///{tmp_path / 'server.db'}"
    return create_database(request.getfixturevalue("postgres_url"), "mlflow")


def test_a_real_tracking_server_on_loopback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend_store: str
) -> None:
    from segad.predict import main as predict
    from segad.tracking import EXPERIMENT_KIND_TAG, MODEL_TRAINING

    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            backend_store,
            "--artifacts-destination",
            str(tmp_path / "artifacts"),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=1).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not come up in 60 s")
        write_mvtec(SPEC, tmp_path / "data")
        monkeypatch.chdir(tmp_path)
        args = ["--data", str(tmp_path / "data"), *ARGS, "--tracking-uri", url, "--experiment", "served"]
        assert main(args) == 0
        req = urllib.request.Request(f"{url}/api/2.0/mlflow/experiments/get-by-name?experiment_name=served")
        exp = json.load(urllib.request.urlopen(req, timeout=10))["experiment"]
        exp_id = exp["experiment_id"]
        assert {"key": EXPERIMENT_KIND_TAG, "value": MODEL_TRAINING} in exp["tags"]
        body = json.dumps({"experiment_ids": [exp_id]}).encode()
        req = urllib.request.Request(
            f"{url}/api/2.0/mlflow/runs/search", data=body, headers={"Content-Type": "application/json"}
        )
        runs = json.load(urllib.request.urlopen(req, timeout=10))["runs"]
        assert len(runs) == 4 and all(r["info"]["status"] == "FINISHED" for r in runs)  # parent + 3 detectors
        parent = next(r for r in runs if "segad.auroc_mean" in {m["key"] for m in r["data"]["metrics"]})
        assert {"segad.auroc_mean", "segad.fpr95_mean"} <= {m["key"] for m in parent["data"]["metrics"]}
        assert parent["info"]["run_name"] == "data-widget · patchcore+padim+fastflow · whole · brf · 5 shots"
        [ds] = parent["inputs"]["dataset_inputs"]  # what fills the UI's Dataset column
        assert ds["dataset"]["name"] == "data/widget" and json.loads(ds["dataset"]["profile"])["train/good"] == 80
        rid = parent["info"]["run_id"]
        req = urllib.request.Request(f"{url}/api/2.0/mlflow/artifacts/list?run_id={rid}&path=charts")
        charts = {f["path"] for f in json.load(urllib.request.urlopen(req, timeout=10))["files"]}
        assert {"charts/roc_curves.png", "charts/overlays.png"} <= charts  # stored through the server
        req = urllib.request.Request(f"{url}/api/2.0/mlflow/registered-models/search")
        [model] = json.load(urllib.request.urlopen(req, timeout=10))["registered_models"]
        # the registered model, loaded through the server (its artifacts proxied), scores new images
        out = tmp_path / "scored"
        images = tmp_path / "data" / "widget" / "test" / "scratch"
        uri = f"models:/{model['name']}/1"
        assert predict(["--model", uri, "--images", str(images), "--out", str(out), "--tracking-uri", url]) == 0
        with (out / "scores.csv").open() as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == len(list(images.iterdir())) and all(r["score"] and not r["error"] for r in rows)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_ctrl_c_ends_the_run_killed(store) -> None:
    from segad import tracking
    from segad.config import TrainConfig

    _, uri, client, _ = store
    with pytest.raises(KeyboardInterrupt), tracking.parent_run(TrainConfig(tracking_uri=uri, experiment="killed")):
        raise KeyboardInterrupt
    run = _runs(client, "killed")[0]
    assert run.info.status == "KILLED" and "interrupted" in run.data.tags["error"]


@pytest.mark.parametrize(
    ("data", "category", "expected"),
    [
        ("textures", None, "segad-textures-brick"),
        ("textures", "grass", "segad-textures-grass"),
        ("elpv", None, "segad-elpv-mono"),
        ("synthetic", None, "segad-synthetic-widget"),
        ("/data/my_set", "bottle", "segad-my_set-bottle"),
    ],
)
def test_experiment_name_uses_a_builtin_sets_default_category(data: str, category: str | None, expected: str) -> None:
    from segad.config import TrainConfig
    from segad.tracking import experiment_name

    assert experiment_name(TrainConfig(data=data, category=category)) == expected


def test_predict_never_runs_the_code_stored_in_the_registry(store, tmp_path: Path) -> None:
    """A registry is a trust boundary: mlflow.pyfunc.load_model runs the model's stored code file, so
    segad.predict reads only data (JSON, safetensors, XGBoost JSON) from it, whatever the code file says."""
    import mlflow

    from segad.predict import main as predict

    root, uri, _, _ = store
    marker = tmp_path / "stored code ran"
    code_files = [p for p in (root / "mlruns").rglob("*.py") if "class SegadPyfunc" in p.read_text()]
    assert code_files, "the logged model's code file was not found in the artifact store"
    saved = {p: p.read_text() for p in code_files}
    try:
        for p in code_files:
            p.write_text(f"open({str(marker)!r}, 'w').close()\nraise SystemExit('tampered')\n")
        images = root / "data" / "widget" / "test" / "scratch"
        args = ["--model", "models:/segad-data-widget/1", "--images", str(images), "--out", str(tmp_path / "out")]
        assert predict([*args, "--tracking-uri", uri]) == 0
        assert not marker.exists()
        mlflow.set_tracking_uri(uri)
        with pytest.raises(SystemExit, match="tampered"):  # what the pyfunc loader does with the same registry
            mlflow.pyfunc.load_model("models:/segad-data-widget/1")
        assert marker.exists()
    finally:
        for p, text in saved.items():
            p.write_text(text)
