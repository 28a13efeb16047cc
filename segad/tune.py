"""``python -m segad.tune``: let Optuna choose the detector combination and SegAD's settings.

Every detector's maps are computed once up front (and cached), so a trial only builds features and
fits classifiers: seconds. The objective sees no image that any reported test set holds: a share of
the test defects (``--tuning-share``, 25%) is reserved for tuning and left out of every seed's shots
and test set, and the good images it uses are the held-out good images, which are training data in
``segad.train`` too. Per repeat (one per seed), ``--shots`` of the reserved defects train and the rest
validate, with the held-out good images in K folds; a generated defect trains only in a fold whose
training part holds the good image it was drawn on. The mean validation AUROC is reported repeat by
repeat so the median pruner can stop weak trials. At the end the best configuration is run once
exactly like ``segad.train`` with the same reservation (test sets without the tuning defects, MLflow
run, model), linked to the study.

Several processes (``--workers N``, or more machines with a PostgreSQL or MySQL ``--storage``) work on
one study at once; the same ``--study`` and ``--storage`` resume it. Each worker beats a heartbeat into
the storage, so a worker that dies mid-trial (SIGKILL, a lost machine) leaves no trial RUNNING for ever:
the next trial any worker starts marks it failed and runs its parameters again (at most twice). Every
worker of a study should use the same ``--heartbeat``: the grace period is the checking worker's.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from detectors.errors import InputError
from features import SegmentSpec, make_segmenter
from features.vector import join_features
from segad.baselines import good_training_images, seeded
from segad.classifier import PRESETS, SegadClassifier
from segad.config import TrainConfig, build_parser, config_from, parse_assignments
from segad.crossfit import fold_fits, own_fold, predict_images
from segad.data import load_dataset
from segad.feature_rows import features, pooled
from segad.metrics import image_auroc
from segad.paths import redact, scrub
from segad.prepare import prepare
from segad.protocol import tuning_defects
from segad.runstate import ended_by, owner_tags
from segad.segmenting import fit_segmenter, segment
from segad.supervised import SUPERVISED

GENERATED_CHOICES = (0, 50, 100, 200)
CV_FOLDS = 3
TUNING_SHARE = 0.25  # of the test defects, reserved for tuning and kept out of every reported test set


class Workbench:
    """What trials reuse: ``segad.train``'s preparation (split, every detector's maps) once, then the
    segments and features of each choice, memoised."""

    def __init__(self, cfg: TrainConfig, max_generated: int) -> None:
        self.cfg = cfg
        # Checked on the dataset's listing, before prepare fits every detector.
        self.pool = tuning_defects(load_dataset(cfg.data, cfg.category), cfg.tuning_share)  # test-image indices
        if len(self.pool) < cfg.shots + 2:
            raise InputError(
                f"--tuning-share {cfg.tuning_share} reserves {len(self.pool)} defects; tuning needs --shots "
                f"{cfg.shots} of them to train and at least 2 to validate: raise --tuning-share or lower --shots"
            )
        # segments="auto": only the dataset's own maps count for "folder"; the search picks the rest. The trials
        # score a classifier on validation defects, never a chosen final score: no cross-fitted judging.
        self.prep = prepare(replace(cfg, generated=max_generated, segments="auto", judge_folds=0))
        self.stacked = cfg.stacked_names
        self._segments: dict[str, tuple] = {}
        self._features: dict[tuple, tuple] = {}
        self._stacked_maps: dict[tuple, StackedMaps] = {}
        self._stacked_features: dict[tuple, tuple] = {}
        self._normal: np.ndarray | None = None
        self._guard = threading.Lock()
        self._fitting: dict[tuple, threading.Lock] = {}  # one per cross-fit, so none is fit twice

    @property
    def names(self) -> list[str]:
        return [*self.prep.maps, *self.stacked]

    def segments(self, spec: SegmentSpec):
        key = str(spec)
        if key not in self._segments:
            segmenter = fit_segmenter(make_segmenter(spec, self.cfg.backbone, self.cfg.device), self.prep)
            self._segments[key] = (*segment(self.prep, segmenter), segmenter.n_segments_)
        return self._segments[key]

    def features(self, dets: tuple[str, ...], spec: SegmentSpec, with_scores: bool):
        """The cached detectors' feature rows (of every scored image and generated defect)."""
        key = (dets, str(spec), with_scores)
        if key not in self._features:
            self._features[key] = features(self.prep, dets, *self.segments(spec), with_scores)
        return self._features[key]

    def stacked_maps(self, name: str, step: int, n_gen: int) -> StackedMaps:
        """A stacked input's maps over one repeat's tuning rows, cross-fitted over its tuning folds."""
        key = (name, step, n_gen)
        with self._guard:
            lock = self._fitting.setdefault(key, threading.Lock())
        with lock:  # parallel trials (--n-jobs) that need this cross-fit wait for it, others go on
            if key not in self._stacked_maps:
                self._stacked_maps[key] = self._cross_fit(name, step, n_gen)
        return self._stacked_maps[key]

    def _cross_fit(self, name: str, step: int, n_gen: int) -> StackedMaps:
        """As ``segad.crossfit`` does for a seed, with the tuning folds as the folds: fold ``j``'s model is fit
        without fold ``j``'s good images, its share of the shots (dealt round-robin: with ``--shots >= 2``
        every fit keeps one) and the generated defects drawn on those images; it scores them and, for fold
        ``j``'s validation, the validation defects, which no fit sees. So every row's map, training or
        validation, comes from a fit that never saw that row. What stays: the classifier of fold ``j``
        trains on maps from fits that saw fold ``j``'s good images (not its validation defects); removing
        that too would take K * (K - 1) fits per repeat."""
        prep, sp, n_hold = self.prep, self.prep.splits[step], self.prep.n_hold
        if self._normal is None:
            self._normal = good_training_images(prep, self.cfg.supervised_good)
        gen_sources = prep.gen_sources[:n_gen]
        folds = tuning_folds(n_hold, len(self.pool), self.cfg.shots, gen_sources, sp.seed)
        good_fold = np.empty(n_hold, np.int64)
        for j, f in enumerate(folds):
            good_fold[f.good_val] = j
        rows = n_hold + self.pool
        shot_rows, val_rows = rows[folds[0].shots], rows[folds[0].val]
        defects = np.concatenate([prep.score_set.load(shot_rows.tolist()), prep.gen_set.load(list(range(n_gen)))])
        defect_fold = np.r_[np.arange(len(shot_rows)) % len(folds), good_fold[gen_sources]]
        config = seeded(self.cfg.supervised_configs()[name], sp.seed)
        n_fixed = len(self._normal) - n_hold
        models = fold_fits(
            SUPERVISED[name], config, self._normal[:n_fixed], self._normal[n_fixed:], good_fold, defects,
            defect_fold, len(folds), lambda msg: print(msg, file=sys.stderr, flush=True), f"tuning repeat {step + 1}: ",
        )  # fmt: skip
        good = own_fold(models, self._normal[n_fixed:], good_fold, [prep.score_set.name(i) for i in range(n_hold)])
        names = [prep.score_set.name(int(i)) for i in shot_rows] + [f"generated image {i}" for i in range(n_gen)]
        bad_maps, bad_scores = own_fold(models, defects, defect_fold, names)
        val_images = prep.score_set.load(val_rows.tolist())
        val_names = [prep.score_set.name(int(i)) for i in val_rows]
        val = [predict_images(m, val_images, val_names) for m in models]
        n_shots = len(shot_rows)
        return StackedMaps(
            good, (bad_maps[:n_shots], bad_scores[:n_shots]), (bad_maps[n_shots:], bad_scores[n_shots:]), val
        )

    def stacked_features(self, names: tuple[str, ...], step: int, n_gen: int, spec: SegmentSpec, with_scores: bool):
        """Feature rows of the stacked inputs ``names`` over one repeat's tuning rows: the held-out good
        images, the shots, the generated defects, and per fold the validation defects."""
        key = (names, step, n_gen, str(spec), with_scores)
        if key not in self._stacked_features:
            seg, gen_seg, k = self.segments(spec)
            n_hold, sp = self.prep.n_hold, self.prep.splits[step]
            fold = tuning_folds(n_hold, len(self.pool), self.cfg.shots, self.prep.gen_sources[:n_gen], sp.seed)[0]
            rows = n_hold + self.pool
            parts = {n: self.stacked_maps(n, step, n_gen) for n in names}

            def block(pick, segments: np.ndarray) -> np.ndarray:
                return pooled({n: pick(m) for n, m in parts.items()}, segments, k, with_scores)

            gen = block(lambda m: m.generated, gen_seg[:n_gen]) if n_gen else None
            val_seg = seg[rows[fold.val]]
            self._stacked_features[key] = (
                block(lambda m: m.good, seg[:n_hold]),
                block(lambda m: m.shots, seg[rows[fold.shots]]),
                gen,
                [block(lambda m, j=j: m.val[j], val_seg) for j in range(len(parts[names[0]].val))],
            )
        return self._stacked_features[key]


@dataclass(frozen=True)
class StackedMaps:
    """A stacked input's (maps, scores) over one repeat's tuning rows, each from a fit that never saw it."""

    good: tuple[np.ndarray, np.ndarray]  # the held-out good images
    shots: tuple[np.ndarray, np.ndarray]  # the repeat's shots, from the reserved defects
    generated: tuple[np.ndarray, np.ndarray]
    val: list[tuple[np.ndarray, np.ndarray]]  # the validation defects, by each fold's model


def suggest(trial, bench: Workbench, max_generated: int) -> dict:
    """One point of the search space, as TrainConfig fields."""
    subsets = [",".join(c) for c in _subsets(bench.names)]
    params: dict = {"detectors": trial.suggest_categorical("detectors", subsets)}
    methods = ["whole", "kmeans"] + (["folder"] if bench.prep.ds.has_segments else [])
    method = trial.suggest_categorical("segments", methods)
    params["segments"] = f"kmeans:{trial.suggest_int('k', 2, 16)}" if method == "kmeans" else method
    params["feature_set"] = trial.suggest_categorical("feature_set", ["full", "no_scores"])
    params["generated"] = trial.suggest_categorical("generated", [g for g in GENERATED_CHOICES if g <= max_generated])
    params["classifier"] = trial.suggest_categorical("classifier", list(PRESETS))
    if params["classifier"] == "logreg":
        params["classifier_params"] = f"C={trial.suggest_float('C', 1e-3, 1.0, log=True)}"
        return params
    over = {
        "max_depth": trial.suggest_int("max_depth", 2, 8),
        "learning_rate": trial.suggest_float("learning_rate", 0.05, 1.0, log=True),
        "subsample": trial.suggest_float("subsample", 0.4, 1.0),
    }
    trees = trial.suggest_int("trees", 50, 400, log=True)
    over["n_estimators" if params["classifier"] == "bt" else "num_parallel_tree"] = trees
    params["classifier_params"] = ",".join(f"{k}={v}" for k, v in over.items())
    return params


def _subsets(names: Sequence[str]) -> list[tuple[str, ...]]:
    """Every non-empty subset with a one-class detector (a stacked supervised input joins one, never alone)."""
    from itertools import combinations

    subsets = [c for r in range(1, len(names) + 1) for c in combinations(names, r)]
    return [c for c in subsets if any(n not in SUPERVISED for n in c)]


@dataclass(frozen=True)
class TuningFold:
    """Row indices of one tuning fold: into the held-out good images, the reserved pool, the generated set."""

    good_train: np.ndarray
    good_val: np.ndarray
    shots: np.ndarray  # reserved defects that train
    val: np.ndarray  # reserved defects that validate
    generated: np.ndarray  # generated defects that train: only those drawn on a training good image


def tuning_folds(n_good: int, n_pool: int, shots: int, gen_sources: np.ndarray, seed: int) -> list[TuningFold]:
    """One repeat's folds: the good images in K folds, the same ``shots`` reserved defects train in each."""
    from sklearn.model_selection import KFold

    folds = min(CV_FOLDS, n_good)
    if folds < 2:
        raise InputError("tuning needs at least 2 held-out good images: raise --holdout")
    order = np.random.default_rng(seed).permutation(n_pool)
    return [
        TuningFold(tr, va, order[:shots], order[shots:], np.flatnonzero(np.isin(gen_sources, tr)))
        for tr, va in KFold(folds, shuffle=True, random_state=seed).split(np.arange(n_good))
    ]


def cv_score(bench: Workbench, params: dict, report=None) -> float:
    """Mean validation AUROC inside the tuning data (``tuning_folds``), one repeat per seed."""
    dets = tuple(params["detectors"].split(","))
    shared, stacked = tuple(d for d in dets if d not in SUPERVISED), tuple(d for d in dets if d in SUPERVISED)
    spec = SegmentSpec.parse(params["segments"]) if params["segments"] != "folder" else SegmentSpec("folder")
    with_scores, n_gen = params["feature_set"] == "full", params["generated"]
    X, X_gen = bench.features(shared, spec, with_scores)
    X_gen, gen_sources = X_gen[:n_gen], bench.prep.gen_sources[:n_gen]
    overrides = TrainConfig(classifier_params=params["classifier_params"]).classifier_overrides()
    n_hold = bench.prep.n_hold
    X_good, X_pool = X[:n_hold], X[n_hold:][bench.pool]
    means = []
    for step, sp in enumerate(bench.prep.splits):
        aurocs = []
        folds = tuning_folds(n_hold, len(X_pool), bench.cfg.shots, gen_sources, sp.seed)
        good, shots, gen, val = X_good, X_pool[folds[0].shots], X_gen, [X_pool[folds[0].val]] * len(folds)
        if stacked:  # joined with the stacked inputs' rows, each from a fit without it (Workbench.stacked_features)
            s_good, s_shots, s_gen, s_val = bench.stacked_features(stacked, step, n_gen, spec, with_scores)
            m, ms = len(shared), len(stacked)
            good = join_features([(good, m), (s_good, ms)], with_scores)
            shots = join_features([(shots, m), (s_shots, ms)], with_scores)
            gen = join_features([(gen, m), (s_gen, ms)], with_scores) if n_gen else np.empty((0, good.shape[1]))
            val = [join_features([(v, m), (sv, ms)], with_scores) for v, sv in zip(val, s_val, strict=True)]
        for j, f in enumerate(folds):
            X_fit = np.concatenate([good[f.good_train], shots, gen[f.generated]])
            y_fit = np.r_[np.zeros(len(f.good_train)), np.ones(len(f.shots) + len(f.generated))]
            if y_fit.sum() == 0:
                raise InputError("--shots 0 tuning needs generated defects: raise --max-generated")
            clf = SegadClassifier(params["classifier"], seed=sp.seed, **overrides).fit(X_fit, y_fit)
            y_val = np.r_[np.zeros(len(f.good_val)), np.ones(len(f.val))]
            aurocs.append(image_auroc(y_val, clf.decision_function(np.r_[good[f.good_val], val[j]])))
        means.append(float(np.mean(aurocs)))
        if report is not None:
            report(float(np.mean(means)), step)
    return float(np.mean(means))


def trial_seed(study_seed: int, trial_number: int) -> int:
    """The seed of one trial's draws: trial numbers are unique within a storage, so no two trials of a
    study (resumed, or run by several workers at once) draw alike, and one ``--sampler-seed`` still
    reproduces a study trial by trial."""
    return int(np.random.SeedSequence([study_seed, trial_number]).generate_state(1)[0])


def make_sampler(kind: str, study_seed: int):
    """Optuna's sampler, re-seeded per trial. A sampler seeded once per process (Optuna's ``seed=``)
    replays the same draws in every process: a resumed study repeated its first trials, and two workers
    ran the same trials twice."""
    import optuna

    base = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler}[kind]

    class TrialSeeded(base):
        def before_trial(self, study, trial) -> None:
            seed = trial_seed(study_seed, trial.number)
            # Optuna keeps its draws in these RandomStates (TPE: its own and its startup RandomSampler's);
            # test_tune checks that resumed and parallel trials differ, so a rename upstream fails there.
            self._rng.rng.seed(seed)
            if hasattr(self, "_random_sampler"):
                self._random_sampler._rng.rng.seed(seed)
            super().before_trial(study, trial)

    TrialSeeded.__name__ = TrialSeeded.__qualname__ = f"TrialSeeded{base.__name__}"
    return TrialSeeded(seed=study_seed)


RDB_SCHEMES = ("sqlite", "postgresql", "mysql", "oracle", "mssql")  # SQLAlchemy URLs: Optuna's RDBStorage


def make_storage(url: str, heartbeat: int):
    """Optuna's storage for ``url``. On a database: a heartbeat every ``heartbeat`` seconds (0: off), and a
    trial whose heartbeat stopped (its worker died) is failed and its parameters re-queued, at most twice,
    so a killed worker loses no trial and, its trial being failed rather than left RUNNING, duplicates none."""
    import optuna

    scheme = url.partition(":")[0].partition("+")[0]
    if scheme not in RDB_SCHEMES or heartbeat <= 0:
        return url
    return optuna.storages.RDBStorage(
        url,
        heartbeat_interval=heartbeat,
        grace_period=2 * heartbeat,
        heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2),
    )


def _open_study(args, sampler_seed: int):
    import optuna

    try:
        return optuna.create_study(
            study_name=args.study,
            storage=make_storage(args.storage, args.heartbeat),
            direction="maximize",
            sampler=make_sampler(args.sampler, sampler_seed),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=2),
            load_if_exists=True,
        )
    except Exception as e:  # optuna wraps driver errors in many types
        message = scrub(_root_cause(e), args.storage)
        if "readonly database" in message or "read-only" in message:
            message += "; make the database writable or give another --storage"
        raise InputError(f"--storage {redact(args.storage)}: cannot open the study: {message}") from None


def _root_cause(e: BaseException) -> str:
    """The driver's own words: optuna wraps them in a generic "exception during the commit" message."""
    inner = e
    while inner.__cause__ is not None or (inner.__context__ is not None and not inner.__suppress_context__):
        inner = inner.__cause__ or inner.__context__
    if inner is e:
        return str(e)
    text = str(inner).strip()
    return f"{text.splitlines()[0]} ({type(inner).__name__})" if text else type(inner).__name__


def best_run_config(cfg: TrainConfig, best_params: dict, study: str) -> TrainConfig:
    """The study's best configuration as a ``segad.train`` config. ``--set`` options of detectors that
    the best trial left out are dropped: segad.train rejects an option for a detector it does not run,
    and the best run failed whenever the study's winner dropped a detector the user had tuned. So are
    ``--maps`` inputs it left out (with none left, the best run holds out ``--holdout`` as usual). The
    supervised baselines (``--supervised``) are not tuned; they train in the best run, next to the tuned
    SegAD on its test sets, with their options."""
    best = replace(cfg, **best_params, run_name=f"best of study {study}")
    if "detectors" in best_params:  # a --maps input the best trial left out is dropped too (it would be appended)
        named = {n.strip() for n in best.detectors.split(",")}
        best = replace(best, maps=",".join(f"{n}={d}" for n, d in cfg.map_folders.items() if n in named))
    chosen = {*best.detector_names, *best.supervised_names}
    kept = [f"{k}={v}" for k, v in parse_assignments(best.detector_options, "--set", "patchcore.coreset_ratio=0.1")]
    kept = [o for o in kept if o.partition(".")[0] in chosen]
    return replace(best, detector_options=",".join(kept))


def spawn_workers(args) -> list[subprocess.Popen]:
    """``--workers N``: N - 1 more processes on the same study, each running ``--trials`` trials; the best
    run is made once, by this process, after all of them end (they run with ``--skip-best-run``)."""
    cmd = [sys.executable, "-m", "segad.tune", *args.argv, "--workers", "1", "--skip-best-run"]
    workers: list[subprocess.Popen] = []
    try:
        for _ in range(args.workers - 1):
            workers.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL))
    except BaseException:
        stop_workers(workers)
        raise
    return workers


def stop_workers(workers: list[subprocess.Popen], grace: float = 10.0) -> None:
    """This process is failing or interrupted: end its workers (terminate, then kill) rather than wait."""
    for w in workers:
        w.terminate()
    for w in workers:
        try:
            w.wait(grace)
        except subprocess.TimeoutExpired:
            w.kill()
            w.wait()


def wait_workers(workers: list[subprocess.Popen]) -> list[subprocess.Popen]:
    """Wait for every worker (on Ctrl-C: stop them); the ones that failed."""
    try:
        for w in workers:
            w.wait()
    except BaseException:
        stop_workers(workers)
        raise
    return [w for w in workers if w.returncode != 0]


def _exit_status(code: int) -> str:
    return f"signal {-code}" if code < 0 else f"exit code {code}"


def _end(client, run_id: str, error: BaseException) -> None:
    status, text = ended_by(error)
    client.set_tag(run_id, "error", text)
    client.set_terminated(run_id, status)


def run_study(args, cfg: TrainConfig) -> dict:
    import mlflow
    import optuna

    from segad import tracking

    if args.trials is not None and args.trials < 1:
        raise InputError("--trials must be at least 1")
    cfg.detector_names  # noqa: B018 - an unknown detector in the restriction list fails here, before any work
    max_gen = max(GENERATED_CHOICES) if args.max_generated is None else args.max_generated
    if cfg.map_folders and args.max_generated is None:
        max_gen = 0  # maps computed elsewhere exist for the dataset's images only, not for generated defects
    study = _open_study(args, args.sampler_seed)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = replace(cfg, experiment=cfg.experiment or tracking.experiment_name(cfg))
    if cfg.tracking_uri:
        mlflow.set_tracking_uri(cfg.tracking_uri)
    client = mlflow.MlflowClient()
    exp = tracking.use_experiment(cfg.experiment)
    tracking.report_stale_runs(client, exp.experiment_id)
    bench = Workbench(cfg, max_gen)
    parent = client.create_run(
        exp.experiment_id, run_name=f"study {args.study}", tags={"segad.study": args.study, **owner_tags()}
    )
    client.log_param(parent.info.run_id, "storage", redact(args.storage))
    client.log_param(parent.info.run_id, "sampler", args.sampler)

    def objective(trial) -> float:
        t0 = time.perf_counter()
        params = suggest(trial, bench, max_gen)
        child = client.create_run(
            exp.experiment_id,
            run_name=f"trial {trial.number}",
            tags={"mlflow.parentRunId": parent.info.run_id, "segad.study": args.study, **owner_tags()},
        )
        rid = child.info.run_id
        for k, v in params.items():
            client.log_param(rid, k, v)

        def report(value: float, step: int) -> None:
            client.log_metric(rid, "cv_auroc_running", value, step=step)
            trial.report(value, step)
            if trial.should_prune():
                raise optuna.TrialPruned()

        try:
            score = cv_score(bench, params, report)
        except optuna.TrialPruned:
            client.log_metric(rid, "duration_s", time.perf_counter() - t0)
            client.set_tag(rid, "state", "PRUNED")
            client.set_terminated(rid, "KILLED")
            raise
        except BaseException as e:  # Ctrl-C too: a trial's run must not stay RUNNING
            _end(client, rid, e)
            raise
        client.log_metric(rid, "cv_auroc", score)
        client.log_metric(rid, "duration_s", time.perf_counter() - t0)
        client.set_tag(rid, "state", "COMPLETE")
        client.set_terminated(rid, "FINISHED")
        trial.set_user_attr("train_config", params)
        return score

    # Whatever ends the study early (Ctrl-C during a trial, the charts or the best run; an error) ends its
    # run with that status: the study's run must never stay RUNNING.
    try:
        t0 = time.perf_counter()
        workers = spawn_workers(args)  # the other local workers, on the study this process has created
        try:
            study.optimize(objective, n_trials=args.trials, timeout=args.timeout, n_jobs=args.n_jobs)
        except BaseException:
            stop_workers(workers)
            raise
        for w in wait_workers(workers):  # a dead worker's running trial is retried by the heartbeat
            print(f"warning: tuning worker pid {w.pid} ended with {_exit_status(w.returncode)}", file=sys.stderr)
        summary = _log_study(client, parent.info.run_id, study, args.study, (time.perf_counter() - t0) / 60)
        if not args.skip_best_run:
            summary.update(_best_run(cfg, summary["best_params"], args.study, client, parent.info.run_id))
    except BaseException as e:
        _end(client, parent.info.run_id, e)
        raise
    client.set_terminated(parent.info.run_id, "FINISHED")
    return summary


def _log_study(client, run_id: str, study, name: str, minutes: float) -> dict:
    """The study's outcome on its run (best value, pace, best_params.json, charts), and as a summary."""
    import optuna

    if not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
        raise RuntimeError("no trial completed; see the trials' errors in MLflow")
    best = study.best_trial
    summary = {
        "study": name,
        "trials": len(study.trials),
        "best_cv_auroc": best.value,
        "best_params": best.user_attrs["train_config"],
        "trials_per_minute": len(study.trials) / max(minutes, 1e-9),
    }
    client.log_metric(run_id, "best_cv_auroc", best.value)
    client.log_metric(run_id, "trials_per_minute", summary["trials_per_minute"])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "best_params.json").write_text(json.dumps({"cv_auroc": best.value, **summary["best_params"]}, indent=2))
        client.log_artifact(run_id, str(tmp / "best_params.json"))
        for path in _study_charts(study, tmp):
            client.log_artifact(run_id, str(path), artifact_path="charts")
    return summary


def _best_run(cfg: TrainConfig, best_params: dict, study: str, client, study_run_id: str) -> dict:
    """The best configuration, once, exactly like segad.train, linked to the study; its test figures."""
    import mlflow

    from segad import tracking
    from segad.train import run as train_run

    best_cfg = best_run_config(cfg, best_params, study)
    with tracking.parent_run(best_cfg) as run:
        mlflow.set_tags({"segad.study": study, "segad.study_run_id": study_run_id})
        result = train_run(best_cfg)
        tracking.log_result(result)
    client.set_tag(study_run_id, "best_train_run_id", run.info.run_id)
    segad_row = next(m for m in result.methods if m.name == "segad")
    return {"test_auroc_mean": segad_row.auroc_mean, "test_fpr95_mean": segad_row.fpr95_mean}


def _study_charts(study, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna

    paths = []
    for name, fn in (
        ("optimization_history", optuna.visualization.matplotlib.plot_optimization_history),
        ("param_importances", optuna.visualization.matplotlib.plot_param_importances),
    ):
        try:
            ax = fn(study)
        except Exception:  # importances need >= 2 completed trials with varying params
            continue
        path = out / f"{name}.png"
        (ax.figure if hasattr(ax, "figure") else ax[0].figure).savefig(path, dpi=100, bbox_inches="tight")
        plt.close("all")
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    import warnings

    import optuna

    warnings.filterwarnings("ignore", category=UserWarning, module="optuna")  # experimental matplotlib API
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # the heartbeat's retry
    ap = build_parser("python -m segad.tune", __doc__)
    ap.add_argument("--trials", type=int, default=20, help="trials each worker process runs")
    ap.add_argument("--workers", type=int, default=1, help="worker processes on this machine, this one included")
    ap.add_argument(
        "--heartbeat",
        type=int,
        default=60,
        help="seconds between heartbeats in a database storage (0: off)",
    )
    ap.add_argument("--timeout", type=float, default=None, help="stop starting trials after this many seconds")
    ap.add_argument("--study", default="segad", help="study name; the same name and storage resume it")
    ap.add_argument("--storage", default="sqlite:///optuna.db", help="Optuna storage URL (sqlite, postgresql, ...)")
    ap.add_argument("--sampler", default="tpe", choices=("tpe", "random"))
    ap.add_argument("--sampler-seed", type=int, default=0)
    ap.add_argument("--n-jobs", type=int, default=1, help="trials in parallel threads in this process")
    ap.add_argument("--max-generated", type=int, default=None, help="cap on generated defects searched (0 to 200)")
    ap.add_argument("--skip-best-run", action="store_true", help="extra workers: do not re-run the best trial")
    ap.set_defaults(tuning_share=TUNING_SHARE)
    argv = list(sys.argv[1:] if argv is None else argv)
    a = ap.parse_args(argv)
    a.argv = argv  # what --workers hands on to the processes it starts
    try:
        if a.workers < 1:
            raise InputError(f"--workers must be at least 1, got {a.workers}")
        if a.heartbeat < 0:
            raise InputError(f"--heartbeat must be >= 0 seconds, got {a.heartbeat}")
        cfg = config_from(vars(a))
        if cfg.no_mlflow:  # every trial is an MLflow run, and the best configuration a registered model
            raise InputError(
                "--no-mlflow: segad.tune records each trial in MLflow; point --tracking-uri at a throw-away "
                "store instead (e.g. sqlite:////tmp/tune.db)"
            )
        if cfg.classifier_start != "zero":  # the trials' objective fits SegAD's forest as it is
            raise InputError(
                "--classifier-start ensemble is not tuned yet: tune with the default, then pass it to segad.train"
            )
        summary = run_study(a, cfg)
    except InputError as e:  # the user's input: a message; anything else is a bug and keeps its traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
