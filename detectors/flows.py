"""Coupling machinery of the normalising-flow detectors CFlow-AD and MSFlow, in plain torch.

Both reference repositories build their flows from FrEIA's ``AllInOneBlock`` (an affine coupling of
one half of the channels given the other half and a condition, its scale soft-clamped by
``clamp * tanh``, then a learned per-channel "global" affine whose scale is a softplus, then a fixed
channel permutation); MSFlow adds its own fusion coupling across scales. FrEIA is not a dependency of
segad, so ``AllInOneCoupling`` and ``FusionCoupling`` re-implement the parts those repositories use.

fastflow's ``CouplingBlock`` is the same idea, but it has no condition input and an exp (not softplus)
global scale, so it does not fit here without an edit there.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

Subnet = Callable[[int, int], nn.Module]


def fc_subnet(dims_in: int, dims_out: int) -> nn.Module:
    """CFlow-AD's ``subnet_fc``: Linear(d, 2d) - ReLU - Linear(2d, out), on patch vectors."""
    return nn.Sequential(nn.Linear(dims_in, 2 * dims_in), nn.ReLU(), nn.Linear(2 * dims_in, dims_out))


class ConvLNSubnet(nn.Module):
    """MSFlow's ``subnet_conv_ln``: 3x3 conv (same width) - layer norm over channels - ReLU - 3x3 conv."""

    def __init__(self, dims_in: int, dims_out: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(dims_in, dims_in, 3, 1, 1)
        self.norm = nn.LayerNorm(dims_in)
        self.conv2 = nn.Conv2d(dims_in, dims_out, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.conv1(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.conv2(F.relu(h))


def _orthogonal(n: int, generator: torch.Generator) -> torch.Tensor:
    """A random orthogonal matrix (Haar, via QR with the sign fix): FrEIA's ``permute_soft``."""
    q, r = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).float()


class AllInOneCoupling(nn.Module):
    """FrEIA's ``AllInOneBlock`` as CFlow-AD and MSFlow configure it (no GIN, no Householder, no
    pre-permutation, SOFTPLUS global affine initialised to scale 1).

    Works on patch vectors (N, C) with a condition (N, P), or on maps (N, C, H, W) with (N, P, H, W).
    ``forward`` returns the output and each sample's log-determinant.
    """

    def __init__(
        self,
        channels: int,
        subnet: Subnet,
        cond_channels: int,
        clamp: float,
        soft_permutation: bool,
        generator: torch.Generator,
    ) -> None:
        super().__init__()
        self.c1 = channels - channels // 2  # FrEIA's split: the conditioning half is the larger one
        self.c2 = channels // 2
        self.clamp = clamp
        self.subnet = subnet(self.c1 + cond_channels, 2 * self.c2)
        # softplus(beta=0.5) * 0.1 of this raw value is 1.0: FrEIA's global_affine_init=1.0
        self.global_scale = nn.Parameter(torch.full((channels,), 2.0 * math.log(math.exp(5.0) - 1.0)))
        self.global_offset = nn.Parameter(torch.zeros(channels))
        if soft_permutation:
            w = _orthogonal(channels, generator)
        else:
            w = torch.eye(channels)[torch.randperm(channels, generator=generator)]
        self.register_buffer("w_perm", w)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        x1, x2 = x[:, : self.c1], x[:, self.c1 :]
        a = self.subnet(x1 if cond is None else torch.cat([x1, cond], 1)) * 0.1
        s = self.clamp * torch.tanh(a[:, : self.c2])
        y = torch.cat([x1, x2 * torch.exp(s) + a[:, self.c2 :]], 1)
        dims = tuple(range(1, x.ndim))
        log_det = s.sum(dim=dims)
        view = (1, -1) + (1,) * (x.ndim - 2)
        scale = 0.1 * F.softplus(self.global_scale, beta=0.5)
        y = y * scale.view(view) + self.global_offset.view(view)
        pixels = x[0, :1].numel()
        log_det = log_det + pixels * torch.log(scale).sum()
        if x.ndim == 2:
            y = F.linear(y, self.w_perm)
        else:
            y = F.conv2d(y, self.w_perm[:, :, None, None])
        return y, log_det


class FusionSubnet(nn.Module):
    """MSFlow's ``FusionSTNets`` (``FusionNet`` with ``add=True``, no condition, no rescale): every scale
    average-pooled to the coarsest grid, mixed by 3x3 conv - layer norm - ReLU - 3x3 conv - ReLU at a
    quarter of the total width, upsampled back and added to its scale; then a 3x3 conv per scale for
    the log-scale and another for the shift of the other half."""

    def __init__(self, channels_in: list[int], channels_out: list[int]) -> None:
        super().__init__()
        total = sum(channels_in)
        mid = max(1, total // 4)
        self.split = channels_in
        self.conv1 = nn.Conv2d(total, mid, 3, 1, 1)
        self.norm = nn.LayerNorm(mid)
        self.conv2 = nn.Conv2d(mid, total, 3, 1, 1)
        pairs = list(zip(channels_in, channels_out, strict=True))
        self.conv_s = nn.ModuleList(nn.Conv2d(ci, co, 3, 1, 1) for ci, co in pairs)
        self.conv_t = nn.ModuleList(nn.Conv2d(ci, co, 3, 1, 1) for ci, co in pairs)

    def forward(self, xs: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        size = xs[-1].shape[-2:]
        h = self.conv1(torch.cat([F.adaptive_avg_pool2d(x, size) for x in xs], 1))
        h = F.relu(self.conv2(F.relu(self.norm(h.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))))
        mixed = [
            x + F.interpolate(part, size=x.shape[-2:], mode="bilinear", align_corners=True)
            for x, part in zip(xs, torch.split(h, self.split, dim=1), strict=True)
        ]
        return [c(m) for c, m in zip(self.conv_s, mixed, strict=True)], [
            c(m) for c, m in zip(self.conv_t, mixed, strict=True)
        ]


class FusionCoupling(nn.Module):
    """MSFlow's ``FusionCouplingLayer``: a two-sided affine coupling over all scales at once, each half's
    scale and shift computed from the other half of *every* scale (``FusionSubnet``). Soft clamp
    ``clamp * 0.636 * atan(s / clamp)``, as the repo."""

    def __init__(self, channels: list[int], clamp: float) -> None:
        super().__init__()
        self.first = [c // 2 for c in channels]
        self.second = [c - c // 2 for c in channels]
        self.clamp = clamp
        self.subnet_first = FusionSubnet(self.second, self.first)  # the repo's subnet_2
        self.subnet_second = FusionSubnet(self.first, self.second)  # the repo's subnet_1

    def _log_e(self, s: torch.Tensor) -> torch.Tensor:
        return self.clamp * 0.636 * torch.atan(s / self.clamp)

    def forward(self, xs: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        x1 = [x[:, :c] for x, c in zip(xs, self.first, strict=True)]
        x2 = [x[:, c:] for x, c in zip(xs, self.first, strict=True)]
        log_det = torch.zeros(xs[0].shape[0], device=xs[0].device)
        s_list, t_list = self.subnet_first(x2)
        y1 = []
        for x, s, t in zip(x1, s_list, t_list, strict=True):
            ls = self._log_e(s)
            y1.append(x * torch.exp(ls) + t)
            log_det = log_det + ls.sum(dim=(1, 2, 3))
        s_list, t_list = self.subnet_second(y1)
        out = []
        for a, x, s, t in zip(y1, x2, s_list, t_list, strict=True):
            ls = self._log_e(s)
            out.append(torch.cat([a, x * torch.exp(ls) + t], 1))
            log_det = log_det + ls.sum(dim=(1, 2, 3))
        return out, log_det


class ClippedAdam(torch.optim.Adam):
    """Adam that clips the global gradient norm of its parameters first (MSFlow's ``clip_grad_norm_(params, 2)``),
    so the shared training loop, which calls ``optimizer.step()`` right after ``backward``, clips too."""

    def __init__(self, params, lr: float, max_norm: float) -> None:
        super().__init__(params, lr=lr)
        self.max_norm = max_norm

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        if self.max_norm > 0:
            params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.max_norm)
        return super().step(closure)


__all__ = ["AllInOneCoupling", "ClippedAdam", "ConvLNSubnet", "FusionCoupling", "FusionSubnet", "fc_subnet"]
