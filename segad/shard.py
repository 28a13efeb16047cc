"""``python -m segad.shard --shard I/N [segad.train's options]``: compute one shard of a dataset's maps
into the shared map cache, so that N processes (on one machine or N machines with one cache folder,
``$SEGAD_CACHE_DIR``) fill it in parallel. A later ``segad.train`` with the same options finds every
map cached.

The options are ``segad.train``'s, so a shard computes exactly the maps that run will ask for (same
detectors, fit images, image size, intensity, generated defects). Each detector is fitted once per
cache entry: the first shard to get there fits it, the others wait for that fit and load it, so all the
entry's maps come from one fitted detector. Shard I takes every N-th image from the I-th on. Maps are
written atomically (temporary name, then rename), so concurrent writers never leave a torn file, and a
map already in the cache is not computed again: a shard that dies is simply run again.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import replace

from detectors.errors import InputError
from segad.config import build_parser, config_from
from segad.console import log
from segad.prepare import plan
from segad.sources import FittedDetector, Shard


def main(argv: Sequence[str] | None = None) -> int:
    ap = build_parser("python -m segad.shard", __doc__)
    ap.add_argument("--shard", required=True, help="I/N: this process computes shard I of N (1-based)")
    args = ap.parse_args(argv)
    try:
        shard = Shard.parse(args.shard)
        cfg = replace(config_from(vars(args)), no_mlflow=True)
        if cfg.no_cache:
            raise InputError("--shard fills the shared map cache: drop --no-cache")
        t0 = time.perf_counter()
        p = plan(cfg, stacking="segad.shard")
        fitted = [s for s in p.sources.values() if isinstance(s, FittedDetector)]
        if not fitted:
            raise InputError("--shard computes segad's detectors' maps; --detectors names none (only --maps folders)")
        computed = sum(s.fill_shard(p.request, shard, log) for s in fitted)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"shard {shard.index}/{shard.count}: {computed} maps computed in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
