"""Benchmark segad.metrics: every metric on N maps (half normal, half with planted defects).

    python experiments/bench_metrics.py                  # 1,000 maps of 256x256, with the reference timings
    python experiments/bench_metrics.py --n 200 --no-reference

Prints the time of each metric (after a separate JIT warm-up, whose time is printed too), the total,
and for AUPRO and AUPIMO the reference-style implementations' time and value on the same maps.
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np


def planted(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Smooth noise maps; the second half gets elliptic defects that the maps partly light up."""
    rng = np.random.default_rng(seed)
    maps = np.empty((n, size, size), np.float32)
    masks = np.zeros((n, size, size), bool)
    for i in range(n):
        maps[i] = cv2.GaussianBlur(rng.random((size, size), np.float32), (0, 0), 4)
        if i >= n // 2:
            for _ in range(rng.integers(1, 4)):
                c = tuple(int(v) for v in rng.integers(20, size - 20, 2))
                axes = tuple(int(v) for v in rng.integers(3, size // 10, 2))
                m = np.zeros((size, size), np.uint8)
                cv2.ellipse(m, c, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
                masks[i] |= m.astype(bool)
                maps[i] += m * float(rng.uniform(0.0, 0.3))
    return masks, maps


def timed(fn, *args, **kw):
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--no-reference", dest="reference", action="store_false")
    args = ap.parse_args()

    from segad import metrics as M
    from segad.metrics.localisation import proportion_localised

    masks, maps = planted(args.n, args.size)
    labels = masks.reshape(args.n, -1).any(1)
    scores = maps.reshape(args.n, -1).max(1)

    small_m, small_a = planted(16, 128, seed=1)
    _, jit = timed(lambda: (M.aupimo(small_m, small_a, num_thresholds=30_000), M.aupro(small_m, small_a)))
    from features.statistics import segment_statistics

    segment_statistics(small_a[0], small_m[0].astype(np.int64), 2)
    print(f"{args.n} maps of {args.size}x{args.size}; JIT warm-up (numba compile or cache load): {jit:.2f} s")

    rows = []
    total = 0.0
    for name, fn in [
        ("image AUROC", lambda: M.image_auroc(labels, scores)),
        ("image AP", lambda: M.image_ap(labels, scores)),
        ("FPR@95TPR", lambda: M.fpr_at_tpr(labels, scores)),
        ("pixel AUROC + AP", lambda: M.pixel_auroc_ap(masks, maps)),
        ("AUPRO@0.3", lambda: M.aupro(masks, maps, 0.3)),
        ("AUPRO@0.05", lambda: M.aupro(masks, maps, 0.05)),
        ("AUPIMO", lambda: M.aupimo(masks, maps).mean),
        ("PL", lambda: proportion_localised(masks, maps)),
    ]:
        value, seconds = timed(fn)
        total += seconds
        rows.append((name, value, seconds))
        print(f"  {name:<18} {np.round(value, 6)!s:>24}  {seconds:7.2f} s", flush=True)
    print(f"  {'all metrics':<18} {'':>24}  {total:7.2f} s")

    if args.reference:
        import sys
        from pathlib import Path

        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
        from experiments.reference_metrics import reference_aupimo, reference_aupro

        ours = dict((r[0], r) for r in rows)
        ref_pro, t_pro = timed(reference_aupro, masks, maps, 0.3)
        print(
            f"reference AUPRO@0.3: {ref_pro:.6f} in {t_pro:.2f} s -> ours {ours['AUPRO@0.3'][1]:.6f}, "
            f"{t_pro / ours['AUPRO@0.3'][2]:.1f}x faster"
        )
        (ref_scores, _), t_pimo = timed(reference_aupimo, masks, maps)
        print(
            f"reference AUPIMO: {np.nanmean(ref_scores):.6f} in {t_pimo:.2f} s -> ours {ours['AUPIMO'][1]:.6f}, "
            f"{t_pimo / ours['AUPIMO'][2]:.1f}x faster"
        )


if __name__ == "__main__":
    main()
