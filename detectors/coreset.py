"""Greedy k-center coreset selection (PatchCore's memory-bank subsampling).

Each step adds the point farthest from the chosen set, so the plain cost is (points x dims) per
chosen point: the part of PatchCore that dominates its fit time. On CPU a numba loop skips most of
that with the triangle inequality: a point whose current centre lies at least twice its distance
away from the new centre cannot get closer to the new one, so only the distance between the two
centres is needed (Elkan's bound for k-means, applied to Gonzalez's greedy). The chosen indices are
the plain greedy's. On GPU torch runs the plain loop.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numba
import numpy as np
import torch

from detectors.errors import InputError


@numba.njit(fastmath=True, cache=True, inline="always")
def _sq_dist(a: np.ndarray, b: np.ndarray) -> np.float32:
    s = np.float32(0.0)
    for j in range(a.shape[0]):
        t = a[j] - b[j]
        s += t * t
    return s


# Skip a point only when the bound clears it by this relative margin, so float32 rounding in the
# two distances can never skip a point the plain loop would have moved.
_BOUND_MARGIN = 1.0 + 1e-3


@numba.njit(parallel=True, fastmath=True, cache=True)
def _greedy_pruned(x: np.ndarray, n_select: int, start: int) -> np.ndarray:
    n = x.shape[0]
    min_d = np.full(n, np.inf, np.float32)  # squared distance to the nearest chosen centre
    owner = np.zeros(n, np.int64)  # position (in ``chosen``) of that centre
    centre_d = np.zeros(n_select, np.float32)  # squared distance from each chosen centre to the new one
    chosen = np.empty(n_select, np.int64)
    idx = start
    for k in range(n_select):
        chosen[k] = idx
        c = x[idx].copy()
        for m in numba.prange(k):
            centre_d[m] = _sq_dist(x[chosen[m]], c)
        for i in numba.prange(n):
            # d(i, new) >= d(owner, new) - d(i, owner) >= d(i, owner) when d(owner, new) >= 2 d(i, owner)
            if k > 0 and centre_d[owner[i]] >= 4.0 * min_d[i] * _BOUND_MARGIN:
                continue
            s = _sq_dist(x[i], c)
            if s < min_d[i]:
                min_d[i] = s
                owner[i] = k
        idx = np.argmax(min_d)
    return chosen


def _greedy_torch(x: torch.Tensor, n_select: int, start: int) -> torch.Tensor:
    sq = (x * x).sum(1)
    min_d = torch.full_like(sq, float("inf"))
    chosen = torch.empty(n_select, dtype=torch.long, device=x.device)
    idx = torch.tensor(start, device=x.device)
    for k in range(n_select):
        chosen[k] = idx
        d = sq - 2.0 * (x @ x[idx]) + sq[idx]
        torch.minimum(min_d, d, out=min_d)
        idx = torch.argmax(min_d)
    return chosen


def greedy_coreset(features: torch.Tensor, ratio: float, projection_dim: int = 256, seed: int = 0) -> torch.Tensor:
    """Indices of ``ceil(ratio * N)`` rows chosen by greedy k-center: on exact distances when the rows have
    at most ``projection_dim`` columns (or it is 0), else on a Gaussian random projection to that many."""
    if not 0.0 < ratio <= 1.0:
        raise InputError(f"coreset_ratio must be in (0, 1], got {ratio}")
    n = features.shape[0]
    n_select = max(1, int(np.ceil(ratio * n)))
    if n_select >= n:
        return torch.arange(n, device=features.device)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    x = features.float()
    if 0 < projection_dim < x.shape[1]:
        proj = torch.randn(x.shape[1], projection_dim, generator=gen) / np.sqrt(projection_dim)
        x = x @ proj.to(x.device)
    start = int(torch.randint(n, (1,), generator=gen))
    if x.device.type == "cpu":
        with _threads_like_torch():
            return torch.from_numpy(_greedy_pruned(np.ascontiguousarray(x.numpy()), n_select, start))
    return _greedy_torch(x, n_select, start)


@contextmanager
def _threads_like_torch() -> Iterator[None]:
    """Run the numba loop on no more threads than torch may use, and leave both counts as they were.

    The loop opens two parallel regions per chosen row, so with more threads than free cores each one
    waits for a descheduled thread (measured: 2,048 of 60,000 rows took 47 s on two busy cores, 2 s on
    one thread). Numba and torch share the OpenMP runtime, and a parallel region has been seen to reset
    torch's thread count, after which a seeded fit in the same process no longer repeats exactly.
    """
    torch_threads, numba_threads = torch.get_num_threads(), numba.get_num_threads()
    numba.set_num_threads(max(1, min(torch_threads, numba_threads)))
    try:
        yield
    finally:
        numba.set_num_threads(numba_threads)
        torch.set_num_threads(torch_threads)
