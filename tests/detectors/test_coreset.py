from __future__ import annotations

import numpy as np
import pytest
import torch

from detectors.coreset import _greedy_pruned, _greedy_torch, greedy_coreset


def naive_greedy(x: np.ndarray, n_select: int, start: int) -> list[int]:
    chosen = [start]
    min_d = ((x - x[start]) ** 2).sum(1)
    while len(chosen) < n_select:
        idx = int(min_d.argmax())
        chosen.append(idx)
        min_d = np.minimum(min_d, ((x - x[idx]) ** 2).sum(1))
    return chosen


def test_numba_and_torch_follow_the_textbook_greedy() -> None:
    x = torch.randn(500, 16, generator=torch.Generator().manual_seed(0))
    picked = greedy_coreset(x, 0.05, projection_dim=0, seed=3).tolist()
    assert picked == naive_greedy(x.numpy().astype(np.float64), 25, picked[0])
    assert _greedy_torch(x, 25, picked[0]).tolist() == picked


def test_pruned_loop_picks_what_the_plain_greedy_picks_on_clustered_features() -> None:
    # Clusters make the triangle-inequality bound skip most points, the case where a wrong skip would show.
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(20, 8))[rng.integers(0, 20, 3000)] * 4 + rng.normal(size=(3000, 8))).astype(np.float32)
    picked = _greedy_pruned(x, 300, 7).tolist()
    assert picked == naive_greedy(x.astype(np.float64), 300, 7)


def test_coreset_covers_the_outliers_a_random_sample_misses() -> None:
    x = torch.cat([torch.randn(2000, 8), torch.full((3, 8), 25.0) + torch.randn(3, 8)])
    picked = set(greedy_coreset(x, 0.01, projection_dim=4).tolist())
    assert {2000, 2001, 2002} & picked  # the far cluster is reached in the first steps


def test_ratio_bounds() -> None:
    x = torch.randn(10, 4)
    assert greedy_coreset(x, 1.0).tolist() == list(range(10))
    with pytest.raises(ValueError, match="coreset_ratio"):
        greedy_coreset(x, 0.0)


def test_the_cpu_loop_uses_no_more_threads_than_torch_and_restores_both(one_torch_thread) -> None:
    import numba

    from detectors.coreset import _threads_like_torch

    before = numba.get_num_threads()
    with _threads_like_torch():
        assert numba.get_num_threads() == 1  # torch may use one thread here
    assert numba.get_num_threads() == before and torch.get_num_threads() == 1
    greedy_coreset(torch.randn(500, 8), 0.1)
    assert numba.get_num_threads() == before and torch.get_num_threads() == 1
