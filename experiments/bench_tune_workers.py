"""Trials per minute of ``segad.tune`` with 1, 2 and 4 worker processes, on SQLite and on PostgreSQL.

Every configuration runs a fresh study of ``--total`` trials: ``--workers W`` with ``--trials total/W``
each, the best run skipped, the maps already cached (a warm-up trial fills the cache first). Two rates
are printed: the study's own (its trials over the time from its first trial to its end, as
``segad.tune`` logs it) and the wall rate including each worker's start (imports, reading the cached
maps). Without ``--postgres URL`` a throwaway PostgreSQL is started on 127.0.0.1 (tests/postgres.py).

    python experiments/bench_tune_workers.py --data textures --category grass --total 8 --options "--seeds 3"
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere


def run_study(common: list[str], storage: str, study: str, trials: int, workers: int) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "segad.tune", *common, "--storage", storage, "--study", study]
    cmd += ["--trials", str(trials), "--workers", str(workers), "--skip-best-run"]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode:
        raise SystemExit(f"segad.tune failed:\n{done.stderr[-3000:]}")
    return wall, json.loads(done.stdout[done.stdout.index("{") :])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="textures")
    ap.add_argument("--category", default="grass")
    ap.add_argument("--total", type=int, default=8, help="trials per study (divisible by every --workers)")
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--options", default="--seeds 3", help="more segad.tune options (default: 3 repeats a trial)")
    ap.add_argument("--postgres", default=None, help="postgresql+psycopg://... (default: a throwaway server)")
    args = ap.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        if args.postgres is None:
            from tests.postgres import postgres_server

            args.postgres = stack.enter_context(postgres_server("optuna"))
        common = ["--data", args.data, "--category", args.category, "--experiment", "bench-tune-workers"]
        common += args.options.split()
        common += ["--tracking-uri", f"sqlite:///{tmp}/mlflow.db", "--model-dir", f"{tmp}/model"]
        stamp = int(time.time())
        run_study(common, f"sqlite:///{tmp}/warm.db", "warm", 1, 1)  # maps cached, stores created
        print(f"{args.data}/{args.category} {args.options}, {args.total} trials a study, {os.cpu_count()} CPU cores")
        print("| storage | workers | trials | wall s | trials/min, wall | trials/min, the study's |")
        print("|---|---|---|---|---|---|")
        for name, storage in (("SQLite", f"sqlite:///{tmp}/optuna.db"), ("PostgreSQL", args.postgres)):
            for w in counts:
                wall, summary = run_study(common, storage, f"bench-{stamp}-{name}-{w}", args.total // w, w)
                n = summary["trials"]
                print(
                    f"| {name} | {w} | {n} | {wall:.0f} | {n / wall * 60:.1f} | {summary['trials_per_minute']:.1f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
