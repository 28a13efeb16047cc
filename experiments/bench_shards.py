"""Wall time of computing one set's maps in 1 and in N shards (``segad.shard``), from a cold cache.

Every shard count starts from an empty cache folder and runs its shards as parallel processes on this
machine; then ``segad.prepare`` checks that a train with the same options finds every map cached.
On one machine the shards share its cores (and each detector is fitted once, by the first shard, while
the others wait), so this measures the overhead and the gain from overlapping one shard's fit with
another's decoding; across machines each shard brings its own cores or GPU.

    python experiments/bench_shards.py --data textures --category brick --shards 1,2
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="textures")
    ap.add_argument("--category", default="brick")
    ap.add_argument("--shards", default="1,2")
    ap.add_argument("--options", default="", help="more segad.train options, e.g. '--image-size 128'")
    args = ap.parse_args()
    opts = ["--data", args.data, "--category", args.category, *args.options.split()]
    print(f"{args.data}/{args.category} {args.options}, {os.cpu_count()} CPU cores")
    print("| shards | wall s | maps computed | a following train finds cached |")
    print("|---|---|---|---|")
    for n in [int(s) for s in args.shards.split(",")]:
        with tempfile.TemporaryDirectory() as cache:
            env = {**os.environ, "SEGAD_CACHE_DIR": cache}
            t0 = time.perf_counter()
            procs = [
                subprocess.Popen(
                    [sys.executable, "-m", "segad.shard", "--shard", f"{i}/{n}", *opts],
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    text=True,
                )
                for i in range(1, n + 1)
            ]
            outs = [p.communicate()[0] for p in procs]
            wall = time.perf_counter() - t0
            if any(p.returncode for p in procs):
                raise SystemExit(f"a shard failed: {outs}")
            computed = sum(int(o.split("maps computed in")[0].split()[-1]) for o in outs)
            check = [sys.executable, "-c", _CHECK, *opts]
            found = subprocess.run(check, env=env, capture_output=True, text=True, check=True).stdout.strip()
            print(f"| {n} | {wall:.0f} | {computed} | {found} |", flush=True)


_CHECK = """
import sys
from dataclasses import replace
from segad.config import build_parser, config_from
from segad.prepare import prepare
cfg = replace(config_from(vars(build_parser().parse_args(sys.argv[1:]))), no_mlflow=True)
prep = prepare(cfg)
print(", ".join(f"{n} {m.cached_maps}/{len(m.scores)} (fit {'cached' if m.fit_seconds == 0 else 'redone'})"
                for n, m in prep.maps.items()))
"""


if __name__ == "__main__":
    main()
