"""Sharded map computation: processes filling one shared cache in parallel, then a train finding it all."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from detectors.errors import InputError
from segad.config import TrainConfig
from segad.data.synthetic import SyntheticSpec, write_mvtec
from segad.maps import fit_detector
from segad.prepare import prepare
from segad.shard import main
from segad.sources import Shard

SPEC = SyntheticSpec(image_size=96, n_train=40, n_test_good=6, n_defects_per_type=2, seed=3)
OPTIONS = ["--image-size", "96", "--device", "cpu", "--detectors", "patchcore,padim", "--generated", "6"]
OPTIONS += ["--shots", "4"]


def _config(data: Path) -> TrainConfig:
    return TrainConfig(data=str(data), image_size=96, device="cpu", detectors="patchcore,padim", generated=6, shots=4)


def test_two_shards_fill_one_cache_and_train_finds_every_map(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_mvtec(SPEC, tmp_path / "data")
    cache = tmp_path / "shared-cache"
    env = {**os.environ, "SEGAD_CACHE_DIR": str(cache)}
    cmd = [sys.executable, "-m", "segad.shard", "--data", str(tmp_path / "data"), *OPTIONS]
    out = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
    shards = [
        subprocess.Popen([*cmd, "--shard", f"{i}/2"], env=env, cwd=tmp_path, **out) for i in (1, 2)
    ]  # started together: both reach the fit at once
    try:
        logs = [s.communicate(timeout=300)[0] for s in shards]
    finally:
        for s in shards:
            s.kill()
            s.wait()
    assert [s.returncode for s in shards] == [0, 0], logs
    for name in ("patchcore", "padim"):
        lines = [line for log in logs for line in log.splitlines() if line.startswith(f"{name}: shard")]
        assert sum("fit loaded from the cache" in line for line in lines) == 1, lines  # fitted once, not twice
    computed = [int(log.split("maps computed in")[0].split()[-1]) for log in logs]
    n_images = len(os.listdir(next(cache.rglob("patchcore-*")) / "maps"))
    assert sum(computed) == 2 * n_images  # each map computed by exactly one shard
    assert not list(cache.rglob("*.tmp"))

    monkeypatch.setenv("SEGAD_CACHE_DIR", str(cache))
    prep = prepare(_config(tmp_path / "data"))
    for name in ("patchcore", "padim"):
        assert prep.maps[name].cached_maps == len(prep.score_set) and prep.maps[name].fit_seconds == 0.0
        assert prep.gen_maps[name].cached_maps == len(prep.gen_set) == 6

    monkeypatch.setenv("SEGAD_CACHE_DIR", str(tmp_path / "unsharded"))
    whole = prepare(_config(tmp_path / "data"))  # one process, its own fit: the same maps
    for name in ("patchcore", "padim"):
        assert whole.maps[name].cached_maps == 0
        # Equal to float16's precision: with one thread per xdist worker, a shard's other batch sizes can move
        # a float32 map value across a float16 rounding edge (one ulp).
        np.testing.assert_allclose(whole.maps[name].maps, prep.maps[name].maps, rtol=2**-10, atol=0)


def test_a_fit_waits_for_the_lock_holder_and_goes_on_when_it_is_killed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import signal
    import threading

    from detectors.registry import make_detector
    from segad.prepare import plan

    write_mvtec(SPEC, tmp_path / "data")
    monkeypatch.setenv("SEGAD_CACHE_DIR", str(tmp_path / "cache"))
    cfg = replace(_config(tmp_path / "data"), detectors="padim", generated=0)
    p = plan(cfg)
    entry = p.request.cache.entry(make_detector("padim", device="cpu"), (96, 96), p.request.fit_set.ids)
    holder = subprocess.Popen(  # another process, mid-fit: it holds the entry's lock
        [sys.executable, "-c", HOLD, str(entry.lock_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        said: list[str] = []
        fitted = threading.Event()

        def fit() -> None:
            fit_detector(make_detector("padim", device="cpu"), p.request.fit_set, entry, said.append)
            fitted.set()

        worker = threading.Thread(target=fit)
        worker.start()
        assert not fitted.wait(3.0)  # it waits for the holder ...
        assert said and "waiting for another process to fit" in said[0]
        os.kill(holder.pid, signal.SIGKILL)  # ... which dies without unlocking: the system releases it
        worker.join(120)
        assert fitted.is_set() and entry.detector_path.is_file()
    finally:
        holder.kill()
        holder.wait()


HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR, 0o644)
fcntl.lockf(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(120)
"""


@pytest.mark.parametrize("text", ["2", "0/2", "3/2", "a/b", "1/0"])
def test_a_bad_shard_is_a_clear_error(text: str, capsys) -> None:
    with pytest.raises(InputError, match="--shard takes I/N"):
        Shard.parse(text)
    assert main(["--shard", text]) == 2
    assert "--shard takes I/N" in capsys.readouterr().err
