"""Time of ``segad.selection.select`` a seed, on synthetic rows shaped like a run's (two detectors).

- 10 shots judged on 1,131 good images with the fold models' evidence (the DRA split's shape);
- no shots: 100 generated defects judge with 200 held-out good images (a 0-shot run's shape), where the
  weighted ensemble's leave-one-out reads weights from 500 bootstrap resamples per judged defect.

    python experiments/bench_select.py
"""

from __future__ import annotations

import time

import numpy as np

from segad.evaluate import good_moments
from segad.selection import Evidence, select


def _rows(n_good: int, n_bad: int, real_bad: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.r_[np.zeros(n_good), np.ones(n_bad)].astype(int)
    real = np.r_[np.ones(n_good, bool), np.full(n_bad, real_bad)]
    det = {"a": rng.normal(0, 1, len(y)) + 2.0 * y, "b": rng.normal(0, 1, len(y)) + 1.5 * y}
    moments = {k: good_moments(v[y == 0]) for k, v in det.items()}
    return rng, y, real, det, moments, rng.normal(0, 1, len(y)) + y


def _time(fn, repeats: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    rng, y, real, det, moments, oof = _rows(113, 10, True)
    n_fit = 1018
    evidence = Evidence(oof, det, rng.normal(0, 1, n_fit), {k: rng.normal(0, 1, n_fit) for k in det})
    judged = _time(lambda: select(oof, det, y, real, moments, evidence=evidence), 10)
    print(f"10 shots, 1,131 judged good images: {1000 * judged:.0f} ms a seed")
    _, y, real, det, moments, oof = _rows(200, 100, False)
    generated = _time(lambda: select(oof, det, y, real, moments), 3)
    print(f"no shots, 100 generated defects and 200 good images judging: {1000 * generated:.0f} ms a seed")


if __name__ == "__main__":
    main()
