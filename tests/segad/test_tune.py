"""Optuna studies on tiny synthetic data: trials as nested MLflow runs, workers sharing one storage, resume."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import optuna
import pytest

from segad.config import TrainConfig
from segad.data.synthetic import SyntheticSpec, write_mvtec
from segad.tune import best_run_config, main, tuning_folds

SPEC = SyntheticSpec(image_size=96, n_train=80, n_test_good=8, n_defects_per_type=3, seed=5)
COMMON = ["--image-size", "96", "--shots", "4", "--seeds", "2", "--device", "cpu", "--max-generated", "50"]
COMMON += ["--tuning-share", "0.4"]  # 6 of the 15 defects: 4 shots to train, 2 to validate
COMMON += ["--set", "patchcore.coreset_ratio=0.25"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("tune")
    write_mvtec(SPEC, root / "data")
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    mp.setenv("SEGAD_CACHE_DIR", str(root / "cache"))
    yield root
    mp.undo()


def _args(root: Path, study: str, trials: int, *extra: str) -> list[str]:
    return [
        "--data", str(root / "data"), *COMMON, "--trials", str(trials), "--study", study,
        "--storage", f"sqlite:///{root / 'optuna.db'}", "--tracking-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--experiment", study, "--model-dir", str(root / "model"), *extra,
    ]  # fmt: skip


def test_four_trials_make_four_nested_runs_and_a_best_train_run(workspace: Path) -> None:
    import mlflow

    trainable = ["--detectors", "patchcore,padim,fastflow", "--set", "fastflow.epochs=2"]  # the registry's detectors
    assert main(_args(workspace, "four", 4, *trainable)) == 0
    client = mlflow.MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")
    exp = client.get_experiment_by_name("four")
    runs = client.search_runs([exp.experiment_id])
    study_run = next(r for r in runs if r.info.run_name == "study four")
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == study_run.info.run_id]
    assert len(trials) == 4 and all("cv_auroc" in r.data.metrics or r.data.tags.get("state") for r in trials)
    assert {"detectors", "segments", "classifier", "generated"} <= set(trials[0].data.params)
    best = next(r for r in runs if r.info.run_name == "best of study four")
    assert best.data.tags["segad.study_run_id"] == study_run.info.run_id
    assert study_run.data.tags["best_train_run_id"] == best.info.run_id
    assert "segad.auroc_mean" in best.data.metrics
    assert best.data.params["tuning_share"] == "0.4"  # the reported run tests without the tuning defects
    charts = {a.path for a in client.list_artifacts(study_run.info.run_id, "charts")}
    assert "charts/optimization_history.png" in charts
    assert {a.path for a in client.list_artifacts(study_run.info.run_id)} >= {"best_params.json"}


def test_tuning_folds_keep_generated_defects_with_their_source() -> None:
    sources = np.repeat(np.arange(9), 3)  # three generated defects drawn on each of 9 good images
    folds = tuning_folds(9, 8, 4, sources, seed=333)
    assert len(folds) == 3
    for f in folds:
        assert not set(f.good_train) & set(f.good_val)
        assert set(sources[f.generated]) <= set(f.good_train)  # none drawn on a validation image
        assert len(f.generated) == 3 * len(f.good_train)
        assert len(f.shots) == 4 and not set(f.shots) & set(f.val) and len(f.val) == 4
    assert sorted(np.concatenate([f.good_val for f in folds])) == list(range(9))


def _trials(workspace: Path, study: str) -> list:
    return optuna.load_study(study_name=study, storage=f"sqlite:///{workspace / 'optuna.db'}").trials


def test_resuming_adds_new_trials_to_the_same_study(workspace: Path) -> None:
    assert main(_args(workspace, "resume", 2, "--skip-best-run")) == 0
    assert main(_args(workspace, "resume", 2, "--skip-best-run")) == 0
    trials = _trials(workspace, "resume")
    assert [t.number for t in trials] == [0, 1, 2, 3]
    params = [t.params for t in trials]
    # A process seeded once replayed the first process's draws: trials 2 and 3 repeated 0 and 1.
    assert params[2] not in params[:2] and params[3] not in params[:2], params
    assert main(_args(workspace, "again", 2, "--skip-best-run")) == 0
    assert [t.params for t in _trials(workspace, "again")] == params[:2]  # one seed reproduces a study


def test_two_workers_share_one_study(workspace: Path) -> None:
    main(_args(workspace, "warm", 1, "--skip-best-run"))  # maps cached, storage created: workers start at once
    cmd = [sys.executable, "-m", "segad.tune", *_args(workspace, "shared", 2, "--skip-best-run")]
    workers = [
        subprocess.Popen(cmd, cwd=workspace, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(2)
    ]
    errors = [w.communicate(timeout=300)[1].decode() for w in workers]
    assert all(w.returncode == 0 for w in workers), errors
    trials = _trials(workspace, "shared")
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]  # four trials, none lost, none run twice
    assert all(t.state.is_finished() for t in trials)
    params = [t.params for t in trials]
    assert all(p not in params[:i] for i, p in enumerate(params)), params  # no worker repeats another's draw


def test_three_workers_finish_twelve_trials_on_postgresql(workspace: Path, postgres_url: str) -> None:
    import mlflow

    main(_args(workspace, "warm", 1, "--skip-best-run"))  # maps cached: the workers start at once
    assert main(_args(workspace, "team", 4, "--storage", postgres_url, "--workers", "3")) == 0
    trials = optuna.load_study(study_name="team", storage=postgres_url).trials
    assert sorted(t.number for t in trials) == list(range(12))  # 3 workers x 4 trials: none lost, none twice
    assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in trials)
    client = mlflow.MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("team").experiment_id])
    trial_runs = [r for r in runs if r.info.run_name.startswith("trial ")]
    assert sorted(int(r.info.run_name.split()[1]) for r in trial_runs) == list(range(12))
    assert len({r.data.tags["segad.pid"] for r in trial_runs}) == 3  # three processes shared the work
    assert [r.info.run_name for r in runs].count("best of study team") == 1  # made once, after every worker


def test_a_killed_workers_trial_is_failed_and_retried_once(workspace: Path, postgres_url: str) -> None:
    import os
    import signal
    import time

    main(_args(workspace, "warm", 1, "--skip-best-run"))
    beat = ["--storage", postgres_url, "--heartbeat", "1", "--skip-best-run"]
    cmd = [sys.executable, "-m", "segad.tune", *_args(workspace, "killed", 50, *beat)]
    worker = subprocess.Popen(cmd, cwd=workspace, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def trials() -> list:
        try:
            return optuna.load_study(study_name="killed", storage=postgres_url).trials
        except KeyError:  # not created yet
            return []

    try:
        # Killed mid-trial, inside the objective (it has drawn parameters): Optuna starts a trial's heartbeat
        # only after its sampler has drawn the first ones, so a process killed before that leaves no
        # heartbeat to go stale (Optuna's limit, not this test's subject).
        deadline = time.monotonic() + 240
        while True:
            live = [t for t in trials() if t.number >= 1 and t.state == optuna.trial.TrialState.RUNNING]
            if live and live[0].params:  # its heartbeat thread runs: it started before the first draw
                break
            assert worker.poll() is None and time.monotonic() < deadline, "the worker never reached its second trial"
            time.sleep(0.02)
        os.kill(worker.pid, signal.SIGKILL)
    finally:
        worker.kill()
        worker.wait()
    [dead] = [t for t in trials() if t.state == optuna.trial.TrialState.RUNNING]  # RUNNING for ever, so far
    time.sleep(2.5)  # past the grace period: two missed heartbeats
    assert main(_args(workspace, "killed", 1, *beat)) == 0
    after = trials()
    assert after[dead.number].state == optuna.trial.TrialState.FAIL
    origin = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number
    retried = [t for t in after if origin(t) == dead.number]
    assert len(retried) == 1 and retried[0].state.is_finished()
    assert dead.params.items() <= retried[0].params.items()  # the same draw, run again
    assert not any(t.state == optuna.trial.TrialState.RUNNING for t in after)
    finished = [t for t in after if t.state != optuna.trial.TrialState.FAIL]
    assert len(finished) == dead.number + 1  # every trial before the kill, plus the retry: nothing lost or doubled


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--detectors", "patchcore,fastflux"], "unknown detector 'fastflux'"),
        (["--storage", "nosuchdb://x"], "cannot open the study"),
        (["--storage", "postgresql://ann:s3cret@127.0.0.1:9/optuna"], "postgresql://ann:***@127.0.0.1:9/optuna"),
        (["--no-mlflow"], "segad.tune records each trial in MLflow"),
    ],
)
def test_bad_input(workspace: Path, capsys, extra: list[str], message: str) -> None:
    assert main([*_args(workspace, "bad", 1), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "s3cret" not in err  # a database password is never echoed


def test_a_read_only_study_database_is_named_as_such(workspace: Path, capsys) -> None:
    """Optuna's own message blamed "invalid data in the commit, e.g. exceeding max length"."""
    import optuna

    db = workspace / "read_only.db"
    optuna.create_study(study_name="ro", storage=f"sqlite:///{db}")
    read_only = f"sqlite:///file:{db}?mode=ro&uri=true"  # SQLite's own read-only mode: root cannot write either
    assert main([*_args(workspace, "ro", 1), "--storage", read_only]) == 2
    err = capsys.readouterr().err
    assert "attempt to write a readonly database" in err and "make the database writable" in err
    assert "exceeding max length" not in err


def test_ctrl_c_in_a_trial_leaves_no_run_running(workspace: Path) -> None:
    """SIGINT mid-trial: the trial's run and the study's run end KILLED (the trial's used to stay RUNNING)."""
    import signal
    import time

    import mlflow

    # Enough trials that the signal lands while the study runs, however fast trials are on cached maps.
    cmd = [sys.executable, "-m", "segad.tune", *_args(workspace, "interrupted", 100_000)]
    # A runner started in the background (``cmd &``, nohup) ignores SIGINT, and Python then installs no
    # KeyboardInterrupt handler in its children: give the study the Ctrl-C that a terminal would.
    proc = subprocess.Popen(
        cmd,
        cwd=workspace,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    client = mlflow.MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")

    def runs() -> dict:
        exp = client.get_experiment_by_name("interrupted")
        return {} if exp is None else {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}

    try:
        deadline = time.monotonic() + 300
        while "trial 0" not in runs() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
        assert "trial 0" in runs(), "the study never started a trial"
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        proc.kill()
    status = {name: r.info.status for name, r in runs().items()}
    assert status["study interrupted"] == "KILLED" and "RUNNING" not in status.values(), status
    assert runs()["trial 0"].data.tags["error"] == "interrupted (Ctrl-C)" or status["trial 0"] == "FINISHED"


def test_too_few_reserved_defects_fail_before_any_detector_is_fit(workspace: Path, capsys, monkeypatch) -> None:
    cache = workspace / "own-cache"
    monkeypatch.setenv("SEGAD_CACHE_DIR", str(cache))
    assert main([*_args(workspace, "few", 1), "--shots", "10"]) == 2  # 6 reserved defects: 10 shots cannot train
    assert "--tuning-share 0.4 reserves 6 defects; tuning needs --shots 10" in capsys.readouterr().err
    assert not (cache / "maps").exists()


def test_zero_trials_is_an_error(workspace: Path, capsys) -> None:
    assert main(_args(workspace, "zero", 0)) == 2
    assert "--trials must be at least 1" in capsys.readouterr().err


def test_the_best_run_drops_options_of_detectors_the_best_trial_left_out() -> None:
    """A study tuned with --set patchcore.* whose winner was PaDiM alone used to fail its best run."""
    cfg = TrainConfig(detectors="patchcore,padim", detector_options="patchcore.coreset_ratio=0.25,padim.n_features=50")
    best = best_run_config(cfg, {"detectors": "padim", "classifier": "logreg"}, "s")
    assert best.detector_options == "padim.n_features=50" and best.run_name == "best of study s"
    assert [c.n_features for c in best.detector_configs().values()] == [50]  # segad.train accepts it
    with pytest.raises(Exception, match="not among --detectors"):  # what the best run hit before
        replace(best, detector_options=cfg.detector_options).detector_configs()
    both = best_run_config(cfg, {"detectors": "patchcore,padim"}, "s")
    assert both.detector_options == cfg.detector_options
    # The supervised baselines are not tuned: they train in the best run, with their options.
    sup = replace(cfg, supervised="devnet", detector_options="patchcore.coreset_ratio=0.25,devnet.epochs=3")
    best = best_run_config(sup, {"detectors": "padim"}, "s")
    assert best.detector_options == "devnet.epochs=3" and best.supervised_configs()["devnet"].epochs == 3
    # A stacked input the best trial chose keeps its options; one it left out loses them.
    stack = replace(cfg, detectors="patchcore,padim,dra", detector_options="dra.epochs=3,padim.n_features=50")
    assert best_run_config(stack, {"detectors": "padim,dra"}, "s").stacked_names == ["dra"]
    assert best_run_config(stack, {"detectors": "padim,dra"}, "s").supervised_configs()["dra"].epochs == 3
    assert best_run_config(stack, {"detectors": "padim"}, "s").detector_options == "padim.n_features=50"


def test_a_stacked_input_is_tuned_on_maps_from_fits_that_never_saw_the_rows(workspace: Path) -> None:
    """``--detectors padim,devnet``: trials may choose devnet; in each tuning fold, the validation images'
    devnet maps come from a fit without them (refit here for fold 0: the same scores)."""
    from segad.baselines import good_training_images
    from segad.supervised import DevNet
    from segad.tune import Workbench, _subsets, cv_score

    short = "devnet.epochs=2,devnet.steps_per_epoch=3,devnet.batch_size=8"
    cfg = TrainConfig(
        data=str(workspace / "data"), image_size=96, shots=4, seeds=1, device="cpu", tuning_share=0.4,
        detectors="padim,devnet", detector_options=short,
    )  # fmt: skip
    bench = Workbench(cfg, max_generated=0)
    assert _subsets(bench.names) == [("padim",), ("padim", "devnet")]  # never a supervised input alone
    params = {"segments": "whole", "feature_set": "full", "generated": 0, "classifier": "brf", "classifier_params": ""}
    assert 0.0 <= cv_score(bench, {**params, "detectors": "padim,devnet"}) <= 1.0

    prep, n_hold = bench.prep, bench.prep.n_hold
    fold = tuning_folds(n_hold, len(bench.pool), 4, prep.gen_sources[:0], prep.splits[0].seed)
    normal = good_training_images(prep, "all")
    held_out, rows = normal[len(normal) - n_hold :], n_hold + bench.pool
    shots = prep.score_set.load(rows[fold[0].shots].tolist())
    config = cfg.supervised_configs()["devnet"]
    config = type(config).from_params({**config.to_params(), "seed": prep.splits[0].seed})
    in_fold_0 = np.arange(len(shots)) % len(fold) == 0
    model = DevNet(config).fit(
        np.concatenate([normal[: len(normal) - n_hold], held_out[fold[0].good_train]]), shots[~in_fold_0]
    )
    maps = bench.stacked_maps("devnet", 0, 0)
    val = prep.score_set.load(rows[fold[0].val].tolist())
    np.testing.assert_allclose(maps.val[0][1], model.decision_function(val), atol=1e-5)
    np.testing.assert_allclose(
        maps.good[1][fold[0].good_val], model.decision_function(held_out[fold[0].good_val]), atol=1e-5
    )
    np.testing.assert_allclose(maps.shots[1][in_fold_0], model.decision_function(shots[in_fold_0]), atol=1e-5)
