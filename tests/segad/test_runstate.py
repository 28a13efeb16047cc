"""Runs left RUNNING by a killed process are closed on the next start; a live process's run is not."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from segad.config import TrainConfig

# A process that opens segad's parent run, then either dies by SIGKILL (no chance to close it) or waits.
OWNER = """
import os, signal, sys, time
from segad.config import TrainConfig
from segad.tracking import parent_run
cfg = TrainConfig(experiment="stale", tracking_uri=sys.argv[1], run_name=sys.argv[2])
with parent_run(cfg):
    print("started", flush=True)
    if sys.argv[2] == "killed":
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(600)
"""


def _start(uri: str, name: str, stderr) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", OWNER, uri, name], stdout=subprocess.PIPE, stderr=stderr, text=True)
    assert proc.stdout.readline().strip() == "started" or name == "killed"
    return proc


def test_a_run_whose_process_died_is_marked_killed_on_the_next_start(tmp_path: Path) -> None:
    import mlflow

    from segad.tracking import parent_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)

    def runs() -> dict:
        exp = client.get_experiment_by_name("stale")
        return {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}

    killed = _start(uri, "killed", subprocess.DEVNULL)
    assert killed.wait(timeout=120) == -9
    assert runs()["killed"].info.status == "RUNNING"  # what SIGKILL leaves behind
    log = tmp_path / "alive.err"
    with log.open("w") as err:
        alive = _start(uri, "alive", err)  # the next start on this host closes it
    try:
        dead = runs()["killed"]
        assert dead.info.status == "KILLED" and "ended without closing the run" in dead.data.tags["error"]
        assert f"marked 1 MLflow run(s) KILLED whose process had died: {dead.info.run_id}" in log.read_text()
        with parent_run(TrainConfig(experiment="stale", tracking_uri=uri, run_name="next")):
            pass
        assert runs()["alive"].info.status == "RUNNING"  # its process still works on it
        assert runs()["next"].info.status == "FINISHED"
    finally:
        alive.kill()
        alive.wait()
