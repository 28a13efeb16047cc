"""Benchmark the per-segment statistics against the reference way (mask, np.quantile, scipy per segment).

python experiments/bench_features.py                 # 500 images x 2 maps x 4 segments, 256x256
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from scipy.stats import kurtosis, skew

from features.statistics import batch_statistics


def reference(anomaly_map: np.ndarray, segments: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros((k, 4))
    for j in range(k):
        v = anomaly_map[segments == j]
        if len(v):
            out[j] = [np.quantile(v, 0.995), skew(v), kurtosis(v), v.mean()]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--maps", type=int, default=2)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--size", type=int, default=256)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    maps = rng.gamma(2.0, 1.0, (args.n, args.maps, args.size, args.size)).astype(np.float32)
    # Component-like segments: horizontal bands, as a product's parts are contiguous regions.
    bands = (np.arange(args.size)[:, None] * args.k // args.size).repeat(args.size, 1)
    segments = np.broadcast_to(bands, (args.n, args.size, args.size)).astype(np.int32)  # as segmenters emit
    batch_statistics(maps[:1], segments[:1], args.k)  # JIT warm-up
    t0 = time.perf_counter()
    ours = batch_statistics(maps, segments, args.k)
    t_ours = time.perf_counter() - t0
    warnings.simplefilter("ignore")
    maps64 = maps.astype(np.float64)
    t0 = time.perf_counter()
    ref = np.array([[reference(maps64[i, m], segments[i], args.k) for m in range(args.maps)] for i in range(args.n)])
    t_ref = time.perf_counter() - t0
    diff = float(np.nanmax(np.abs(ours - ref)))
    print(f"{args.n} images x {args.maps} maps x {args.k} segments, {args.size}x{args.size}")
    print(f"  ours      {t_ours:7.3f} s  ({t_ours / args.n / args.maps * 1e3:.3f} ms per map)")
    print(f"  reference {t_ref:7.3f} s  ({t_ref / args.n / args.maps * 1e3:.3f} ms per map)")
    print(
        f"  speed-up {t_ref / t_ours:.1f}x; max |difference| {diff:.2e}; NaN pattern equal: "
        f"{np.array_equal(np.isnan(ours), np.isnan(ref))}"
    )


if __name__ == "__main__":
    main()
