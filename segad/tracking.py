"""MLflow: one parent run per ``segad.train``, a nested run per base detector, charts, the model.

The tracking store is MLflow's own default (so ``mlflow ui`` in the same folder shows every run)
unless ``--tracking-uri`` or ``MLFLOW_TRACKING_URI`` points elsewhere, e.g. a team's server.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from segad.runstate import close_stale_runs, ended_by, owner_tags

if TYPE_CHECKING:
    from segad.baselines import BaselineRun
    from segad.config import TrainConfig
    from segad.evaluate import MethodResult
    from segad.results import TrainResult

MODEL_CODE = Path(__file__).with_name("mlflow_model.py")
# The experiment tag MLflow 3's UI reads to open an experiment on its runs table, not its GenAI (traces)
# view. MLflow's Python package has no constant for it; these are the key and value of its UI's enum.
EXPERIMENT_KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"


def experiment_name(cfg: TrainConfig) -> str:
    if cfg.experiment:
        return cfg.experiment
    from segad.data import BUILTIN_DATASETS  # each built-in set's categories, its default first

    builtin = BUILTIN_DATASETS.get(str(cfg.data))
    data = str(cfg.data) if builtin else Path(cfg.data).name
    category = cfg.category or (builtin[0] if builtin else None)
    return f"segad-{data}-{category}" if category else f"segad-{data}"


def use_experiment(name: str) -> Any:
    """Set the active experiment, created (or, if older, tagged) as a model-training one for MLflow's UI."""
    import mlflow

    exp = mlflow.set_experiment(name)
    if EXPERIMENT_KIND_TAG not in exp.tags:  # a user's own kind is kept
        mlflow.MlflowClient().set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
    return exp


def ui_link(run: Any) -> str:
    """Where ``mlflow ui`` (run in this folder, default port) shows the run, in its model-training view:
    MLflow 3.17's UI picks that view from the URL's ``workflowType`` (else the browser's last choice,
    GenAI at first), not from the experiment's kind tag, which older MLflow 3 UIs read."""
    info = run.info
    return f"http://127.0.0.1:5000/#/experiments/{info.experiment_id}/runs/{info.run_id}?workflowType=machine_learning"


def run_name(
    cfg: TrainConfig, dataset: str | None = None, segments: str | None = None, shots: str | None = None
) -> str:
    """What ran, as the runs table shows it: ``elpv-mono · patchcore+padim · kmeans:8 · brf · 10 shots``.

    At the start the dataset and "auto" segments are as configured; ``log_result`` renames the run with
    the resolved ones (``dataset`` as ``name/category``). ``shots`` replaces "10 shots" (segad.curve)."""
    if cfg.run_name:
        return cfg.run_name
    data = dataset.replace("/", "-") if dataset else experiment_name(replace(cfg, experiment=None))[6:]
    parts = [
        data,
        "+".join(cfg.detector_names),
        segments or cfg.segments,
        cfg.classifier,
        shots or f"{cfg.shots} shots",
    ]
    return " · ".join(parts)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _tags(cfg: TrainConfig) -> dict[str, str]:
    import mlflow
    import torch
    import xgboost

    import segad
    from detectors.device import resolve_device

    tags = {
        "segad.version": segad.__version__,
        "device": str(resolve_device(cfg.device)),
        "torch": torch.__version__,
        "xgboost": xgboost.__version__,
        "mlflow": mlflow.__version__,
        "python": platform.python_version(),
    }
    if commit := _git_commit():
        tags["git.commit"] = commit
    return tags


@contextmanager
def parent_run(cfg: TrainConfig) -> Iterator[Any]:
    """The run that holds everything of one ``segad.train``; an error ends it FAILED, Ctrl-C KILLED."""
    import mlflow

    if cfg.tracking_uri:
        mlflow.set_tracking_uri(cfg.tracking_uri)
    exp = use_experiment(experiment_name(cfg))
    report_stale_runs(mlflow.MlflowClient(), exp.experiment_id)
    run = mlflow.start_run(run_name=run_name(cfg), tags={**_tags(cfg), **owner_tags()})
    try:
        yield run
    except BaseException as e:
        status, error = ended_by(e)
        mlflow.set_tag("error", error)
        mlflow.end_run(status=status)
        raise
    else:
        mlflow.end_run(status="FINISHED")


def report_stale_runs(client: Any, experiment_id: str) -> None:
    """Close the runs that killed processes left RUNNING, and say so (segad.runstate)."""
    if closed := close_stale_runs(client, experiment_id):
        print(f"marked {len(closed)} MLflow run(s) KILLED whose process had died: {', '.join(closed)}", file=sys.stderr)


def _params(cfg: TrainConfig, result: TrainResult) -> dict[str, Any]:
    pipe = result.pipeline
    params = {k: v for k, v in cfg.__dict__.items() if v is not None and k not in ("summary_json", "tracking_uri")}
    params["dataset"] = result.dataset
    params["segments_resolved"] = pipe.info.get("segments", cfg.segments)
    params["judge_folds_resolved"] = result.judge_folds
    params["n_segments"] = pipe.n_segments
    params["n_features"] = len(pipe.feature_names)
    for k, v in pipe.classifier.params.items():
        params[f"classifier.{k}"] = v
    for det in pipe.detectors:
        for k, v in det.config.identity().items():
            params[f"{det.name}.{k}"] = v
    return params


def log_result(result: TrainResult, register: bool = True) -> None:
    """Params, per-seed metrics, nested detector runs, charts, the summary and the model."""
    import mlflow

    cfg = result.config
    params = _params(cfg, result)
    mlflow.log_params(params)
    log_dataset(result.dataset_table)
    if not cfg.run_name:  # the dataset and "auto" segments are resolved now: the name says which ran
        rename_active_run(run_name(cfg, result.dataset, str(params["segments_resolved"])))
    on_parent = ("segad", "ensemble", "classifier", *(b.row for b in result.baselines))
    for m in result.methods:
        if m.name in on_parent:
            mlflow.log_metrics(_method_metrics(m, f"{m.name}."))
    mlflow.log_metric("seconds", result.seconds)
    from segad.selection import choice_summary

    # Which final score each seed chose on its training rows (segad.selection), and the saved model's.
    saved = result.selections[0].blend
    mlflow.set_tags(
        {
            "segad.final_score": saved.label,
            "segad.final_scores": choice_summary(result.selections),
            "segad.base_weights": ", ".join(f"{d} {a:.2f}" for d, a in saved.base_weights.items()),
        }
    )
    # What the saved model's threshold does on the first seed's test set (its classifier never saw it).
    dep = result.deployment
    mlflow.log_metrics(
        {
            "deploy.fpr": dep.fpr,
            "deploy.tpr": dep.tpr,
            "deploy.target_fpr": cfg.target_fpr,
            "deploy.threshold": dep.calibration.threshold,
            "deploy.guaranteed_fpr": dep.calibration.guaranteed_fpr,
            "deploy.calibration_n_good": dep.calibration.n_good,
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for det_name in result.detector_maps:
            _log_detector_run(result, det_name, tmp)
        for b in result.baselines:
            _log_baseline_run(result, b, tmp)
        (tmp / "summary.json").write_text(json.dumps(result.summary(), indent=2))
        mlflow.log_artifact(str(tmp / "summary.json"))
        from segad import report

        for path in report.charts(result, tmp):
            mlflow.log_artifact(str(path), artifact_path="charts")
        _log_model(result, tmp, register)


def log_dataset(ds: Any) -> None:
    """The image set as the active run's dataset input (segad.lineage)."""
    import mlflow

    from segad.lineage import ImageSet

    mlflow.log_input(ImageSet(ds), context="train")


def log_curve_point(point: Any, first: bool) -> None:
    """One point of ``segad.curve``: each method's AUROC / FPR@95TPR mean and std at step = shots (and,
    with the first, the dataset: every point reads the same images)."""
    import mlflow

    if first:
        log_dataset(point.dataset)
    metrics = {"test_defects": float(point.n_test_defects)}
    for m in point.methods:
        for key in ("auroc_mean", "auroc_std", "fpr95_mean", "fpr95_std"):
            metrics[f"{m.name}.{key}"] = getattr(m, key)
    mlflow.log_metrics(metrics, step=point.shots)


def rename_active_run(name: str) -> None:
    import mlflow

    mlflow.MlflowClient().update_run(mlflow.active_run().info.run_id, name=name)


def log_artifacts_of_curve(*paths: Path) -> None:
    import mlflow

    for path in paths:
        mlflow.log_artifact(str(path))


def _log_detector_run(result: TrainResult, name: str, tmp: Path) -> None:
    import mlflow

    from segad.data.images import load_mask
    from segad.mapfolder import GivenMaps
    from segad.metrics import aupimo, aupro, image_ap, pixel_auroc_ap, proportion_localised

    dm = result.detector_maps[name]
    method = next(m for m in result.methods if m.name == name)
    ds = result.dataset_table
    n_hold = len(dm.scores) - len(ds.test)
    labels = np.array([s.label for s in ds.test])
    with mlflow.start_run(run_name=name, nested=True, tags=owner_tags()):
        ident = dm.detector.identity() if isinstance(dm.detector, GivenMaps) else dm.detector.config.identity()
        mlflow.log_params({"detector": name, **ident})
        metrics = {
            **_method_metrics(method),
            "ap_all_test": image_ap(labels, dm.scores[n_hold:]),
            "fit_seconds": dm.fit_seconds,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        }
        if np.isfinite(dm.predict_ms_per_image):
            metrics["predict_ms_per_image"] = dm.predict_ms_per_image
        _log_training(dm.detector, metrics)
        if ds.has_masks:
            size = dm.maps.shape[1:]
            masks = np.stack([load_mask(s.mask_path, size, s.image_path) for s in ds.test])
            maps = dm.maps[n_hold:].astype(np.float32)
            metrics["pixel_auroc"], metrics["pixel_ap"] = pixel_auroc_ap(masks, maps)
            metrics["aupro_0.3"] = aupro(masks, maps, 0.3)
            metrics["aupro_0.05"] = aupro(masks, maps, 0.05)
            metrics["pl"] = proportion_localised(masks, maps)
            try:
                pimo = aupimo(masks, maps)
                metrics["aupimo_mean"], metrics["aupimo_std"] = pimo.mean, pimo.std
                table = tmp / f"aupimo_{name}.csv"
                rows = ["image,defect_type,aupimo"] + [
                    f"{s.image_path},{s.defect_type},{v}" for s, v in zip(ds.test, pimo.scores, strict=True)
                ]
                table.write_text("\n".join(rows) + "\n")
                mlflow.log_artifact(str(table))
            except ValueError as e:  # too few normal pixels for the bounds: say so, never a number
                mlflow.set_tag("aupimo", f"not computed: {e}")
        else:
            mlflow.set_tag("pixel_metrics", "skipped: the dataset has no masks")
        mlflow.log_metrics(metrics)


def _log_baseline_run(result: TrainResult, baseline: BaselineRun, tmp: Path) -> None:
    """A supervised baseline's nested run: per-seed AUROC / FPR@95TPR and fit time, every seed's loss
    curve (``loss_seed_<seed>``) and the first seed's model (the one saved with the pipeline)."""
    import mlflow

    method = next(m for m in result.methods if m.name == baseline.row)
    with mlflow.start_run(run_name=baseline.row, nested=True, tags=owner_tags()):
        stacked = baseline.name in result.config.stacked_names  # also SegAD's input, cross-fitted per seed
        params = {"method": baseline.name, "good_images": baseline.good_images, "stacked": stacked}
        mlflow.log_params({**params, **baseline.config.identity()})
        for i, fit in enumerate(baseline.fits):
            mlflow.log_metric("fit_seconds", fit.seconds, step=i)
        metrics = {
            "fit_seconds_mean": float(np.mean([f.seconds for f in baseline.fits])),
            "n_good": baseline.fits[0].n_good,
        }
        if stacked:
            metrics["fold_fit_seconds_mean"] = float(np.mean([f.fold_seconds for f in baseline.fits]))
        mlflow.log_metrics({**_method_metrics(method), **metrics})
        _log_curves({f"loss_seed_{fit.seed}": fit.losses for fit in baseline.fits})
        mlflow.log_artifact(str(baseline.model.save(tmp / f"{baseline.name}.safetensors")))


def _log_training(det: object, metrics: dict[str, float]) -> None:
    """A trainable detector's phases: time, peak memory, final loss, and the loss curve as history.

    The report is saved with the fitted detector, so a fit taken from the cache still logs it.
    """
    import mlflow

    for report in getattr(det, "training_reports_", []):
        key = report.phase.split()[-1]
        metrics[f"{key}_seconds"] = report.seconds
        metrics[f"{key}_peak_memory_mib"] = report.peak_memory_mib
        metrics[f"{key}_final_loss"] = report.final_loss
        mlflow.set_tag(f"{key}_memory_kind", report.memory_kind)
    _log_curves({f"loss_{phase}": curve for phase, curve in getattr(det, "loss_history_", {}).items()})


def _method_metrics(m: MethodResult, prefix: str = "") -> dict[str, float]:
    """A method's AUROC / FPR@95TPR per seed (logged here, step = seed index) and their mean / std (returned)."""
    import mlflow

    for i, row in enumerate(m.per_seed):
        mlflow.log_metrics({f"{prefix}auroc": row.auroc, f"{prefix}fpr95": row.fpr95}, step=i)
    stats = {"auroc_mean": m.auroc_mean, "auroc_std": m.auroc_std, "fpr95_mean": m.fpr95_mean, "fpr95_std": m.fpr95_std}
    return {f"{prefix}{k}": v for k, v in stats.items()}


def _log_curves(curves: Mapping[str, Sequence[float]]) -> None:
    """Curves as metric histories (step = point), batched: one request per 1000 points, not one per point."""
    import mlflow
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    points = [Metric(key, float(v), now, step) for key, curve in curves.items() for step, v in enumerate(curve)]
    client, run_id = mlflow.MlflowClient(), mlflow.active_run().info.run_id
    for s in range(0, len(points), 1000):  # MLflow takes at most 1000 metrics per batch
        client.log_batch(run_id, metrics=points[s : s + 1000])


def _log_model(result: TrainResult, tmp: Path, register: bool) -> None:
    """The pipeline as a pyfunc model. No signature: a column schema would make MLflow refuse the plain
    lists of paths and the raw image arrays the model also takes (``segad.mlflow_model``)."""
    import mlflow
    from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR

    model_dir = result.pipeline.save(tmp / "pipeline")
    name = f"segad-{result.dataset.replace('/', '-')}" if register else None
    before = os.environ.get(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name)
    os.environ[MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name] = "false"  # no "Downloading artifacts" bar per run
    try:
        mlflow.pyfunc.log_model(
            name="model",
            python_model=str(MODEL_CODE),
            artifacts={"pipeline": str(model_dir)},
            registered_model_name=name,
            code_paths=None,
        )
    finally:
        if before is None:
            os.environ.pop(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name)
        else:
            os.environ[MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name] = before
