"""Exact nearest-neighbour search against a memory bank, in query chunks so the (queries x bank)
distance matrix never exists whole. PatchCore, MSPBA and the feature dictionary take the nearest row;
CFA takes the k nearest."""

from __future__ import annotations

from collections.abc import Callable

import torch

Reduce = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _search(queries: torch.Tensor, bank: torch.Tensor, bank_sq: torch.Tensor, chunk: int, reduce: Reduce):
    dists, idx = [], []
    for s in range(0, queries.shape[0], chunk):
        q = queries[s : s + chunk].to(bank.dtype)
        d2 = torch.addmm(bank_sq[None, :], q, bank.T, alpha=-2.0).add_((q.float() ** 2).sum(1, keepdim=True))
        d, i = reduce(d2)
        dists.append(d.float().clamp_min_(0))
        idx.append(i)
    return torch.cat(dists), torch.cat(idx)


def nearest(
    queries: torch.Tensor, bank: torch.Tensor, bank_sq: torch.Tensor, chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance and index of each query's nearest bank row (``bank_sq``: the rows' squared norms)."""
    d2, idx = _search(queries, bank, bank_sq, chunk, lambda d2: d2.min(dim=1))
    return d2.sqrt_(), idx


def k_nearest(queries: torch.Tensor, bank: torch.Tensor, k: int, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared distances (ascending) and indices of each query's k nearest bank rows. No gradient:
    callers recompute the distances to the chosen rows with autograd when they need it."""
    with torch.no_grad():
        queries = queries.detach()
        return _search(queries, bank, (bank * bank).sum(1), chunk, lambda d2: d2.topk(k, dim=1, largest=False))
