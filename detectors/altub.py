"""AltUB (Kim, Jang, Lee & Choi, 2022, "AltUB: Alternating Training Method to Update Base Distribution of
Normalizing Flow for Anomaly Detection"): FastFlow whose base distribution is learned.

FastFlow maps good features to a fixed N(0, I). AltUB gives each level's base distribution a learnable
per-channel mean and log scale, N(mu, diag(sigma^2)), and trains it in alternation with the flow: at
every step but each ``freezing_interval``-th, the flow and the base take one Adam step each at the
flow's learning rate; at each ``freezing_interval``-th step (step 0, 5, 10, ...) the flow is frozen and
only the base moves, with its own Adam state and a larger learning rate (``base_learning_rate``).
Gradients are clipped to norm ``grad_clip`` per group (flow, base) before the step. The loss is the
NLL per dimension under the learned base: 0.5 ((z - mu) / sigma)^2 + log sigma - log|det J|.

Map: 1 - the mean over levels of exp(-mean_c [0.5 ((z - mu) / sigma)^2 + log sigma]) (FastFlow's
probability map with the learned base, as the authors' code scores), upsampled, blurred sigma 4;
score = its maximum. The flow itself is ``detectors.fastflow``'s (Lite0 levels 1-3, layer norm, 8
coupling blocks alternating 3x3 / 1x1, hidden ratio 1, clamp 2).

Defaults and their sources:

- base distribution: per-channel mean and log sigma per level, starting at N(0, I) - the authors'
  ``AltUB`` module (``base_mean``, ``base_cov`` = log sigma; z -> (z - mu) / exp(log sigma)) and
  VisionAD's ``algos/altub/algo_class.py`` mode ``multi_channel_mean_var`` (the benchmark's default);
- schedule: freezing interval 5, base lr 0.05 on the base-only steps, base lr = flow lr (1e-3) on the
  joint steps, separate Adam states for the two base updates, gradient-norm clip 100 per group -
  VisionAD ``algos/altub/algo_class.py`` and ``_defaultconfigs.py``;
- flow lr 1e-3, weight decay 1e-5, 100 epochs: ``detectors.fastflow``'s defaults.

Deviations, and why:

- VisionAD parametrises the scale as a log variance; this uses log sigma, as the authors' module does
  (the same family of distributions; only the step size per unit of sigma differs).
- VisionAD's flow optimiser passes ``weight_decay=learning_rate`` (1e-3), FastFlow's reference uses
  1e-5; the paper keeps FastFlow's training, so 1e-5 here.
- 100 epochs, not VisionAD's 500: as ``fastflow`` (on ELPV FastFlow's AUROC stops moving well before).
- Lite0 levels instead of the paper's WideResNet50 / CaiT: the only backbone shipped offline.
- The base-only steps are counted over the whole fit (steps 0, 5, 10, ...); VisionAD counts batches
  within each epoch, so with fewer than ``freezing_interval`` batches per epoch (a few-shot set) every
  epoch's first step is base-only, and with one batch per epoch the flow would never train.
- On the base-only steps the flow runs without autograd: it does not step, so its gradients were
  computed and thrown away in the reference; the base's gradient and the loss are the same.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Self

import torch
from torch import nn

from detectors.base import ImageBatch, as_image_tensor
from detectors.errors import InputError
from detectors.fastflow import FastFlow, FastFlowConfig
from detectors.training import sample_batch


@dataclass(frozen=True)
class AltUBConfig(FastFlowConfig):
    freezing_interval: int = 5
    base_learning_rate: float = 0.05
    grad_clip: float = 100.0


class BaseDistribution(nn.Module):
    """N(mean, diag(exp(log_scale))^2) over a level's channels, the same at every position."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.mean = nn.Parameter(torch.zeros(channels))
        self.log_scale = nn.Parameter(torch.zeros(channels))

    def nll_terms(self, z: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> 0.5 ((z - mu) / sigma)^2 + log sigma per element (the constant dropped)."""
        mu, log_s = self.mean[None, :, None, None], self.log_scale[None, :, None, None]
        return 0.5 * ((z.float() - mu) * torch.exp(-log_s)).pow(2) + log_s


class AlternatingAdam(torch.optim.Optimizer):
    """Adam for AltUB's two parameter sets: group 0 the flow, group 1 the base distribution.

    Set ``base_only`` before each ``step``: False steps both groups at their ``lr``; True steps only
    the base, at its group's ``base_lr`` with a second, separate pair of moments (the reference's
    second base optimiser). Gradients are clipped to norm ``clip`` per group first. Plain Adam with
    L2 weight decay, as ``torch.optim.Adam``; all state is tensors, so checkpoints store it.
    """

    def __init__(
        self,
        flow_params: Iterable[nn.Parameter],
        base_params: Iterable[nn.Parameter],
        lr: float,
        weight_decay: float,
        base_lr: float,
        clip: float,
    ) -> None:
        groups = [
            {"params": list(flow_params), "lr": lr, "weight_decay": weight_decay, "base_lr": 0.0},
            {"params": list(base_params), "lr": lr, "weight_decay": 0.0, "base_lr": base_lr},
        ]
        super().__init__(groups, {"betas": (0.9, 0.999), "eps": 1e-8, "clip": clip})
        self.base_only = False

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> None:  # type: ignore[override]
        for i, group in enumerate(self.param_groups):
            params = [p for p in group["params"] if p.grad is not None]
            if group["clip"] > 0 and params:
                torch.nn.utils.clip_grad_norm_(params, group["clip"])
            if self.base_only and i == 0:
                continue
            suffix, lr = ("_base", group["base_lr"]) if self.base_only else ("", group["lr"])
            beta1, beta2 = group["betas"]
            for p in params:
                grad = p.grad
                if group["weight_decay"]:
                    grad = grad.add(p, alpha=group["weight_decay"])
                state = self.state[p]
                if f"step{suffix}" not in state:
                    state[f"step{suffix}"] = torch.zeros((), dtype=torch.float32)
                    state[f"exp_avg{suffix}"] = torch.zeros_like(p)
                    state[f"exp_avg_sq{suffix}"] = torch.zeros_like(p)
                state[f"step{suffix}"] += 1
                t = float(state[f"step{suffix}"])
                m, v = state[f"exp_avg{suffix}"], state[f"exp_avg_sq{suffix}"]
                m.lerp_(grad, 1 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (v / (1 - beta2**t)).sqrt_().add_(group["eps"])
                p.addcdiv_(m, denom, value=-lr / (1 - beta1**t))


class AltUB(FastFlow):
    name = "altub"
    config_class = AltUBConfig
    config: AltUBConfig

    def _build(self, shapes: list[tuple[int, int, int]]) -> None:
        super()._build(shapes)
        self.bases_ = nn.ModuleList(BaseDistribution(s[0]) for s in shapes).to(self.device)

    def fit(self, images: ImageBatch) -> Self:
        cfg = self.config
        x = as_image_tensor(images, "good images")
        if min(x.shape[-2:]) < 32:
            raise InputError(f"altub needs images of at least 32x32; got {tuple(x.shape[-2:])}")
        if cfg.freezing_interval < 1:
            raise InputError(f"altub: freezing_interval must be at least 1, got {cfg.freezing_interval}")
        gen = self._start_training(x)
        feats = self._frozen_features(x, cfg.layers)
        self._build([tuple(f.shape[1:]) for f in feats])
        opt = AlternatingAdam(
            self.flows_.parameters(),
            self.bases_.parameters(),
            lr=cfg.learning_rate,
            weight_decay=cfg.weight_decay,
            base_lr=cfg.base_learning_rate,
            clip=cfg.grad_clip,
        )
        steps = cfg.epochs * -(-len(x) // cfg.batch_size)

        def loss(step: int) -> torch.Tensor:
            opt.base_only = step % cfg.freezing_interval == 0
            idx = sample_batch(len(x), cfg.batch_size, gen)
            total = torch.zeros((), device=self.device)
            for flow, base, f in zip(self.flows_, self.bases_, feats, strict=True):
                with torch.set_grad_enabled(not opt.base_only):
                    z, log_det = flow(f[idx].to(self.device, non_blocking=True))
                nll = base.nll_terms(z).sum(dim=(1, 2, 3)) - log_det
                total = total + (nll / z[0].numel()).mean()
            return total

        self._train("train", loss, {"flows": self.flows_, "bases": self.bases_}, opt, steps, gen)
        self.image_size_ = tuple(x.shape[-2:])
        return self

    def _nll_terms(self, level: int, z: torch.Tensor) -> torch.Tensor:
        return self.bases_[level].nll_terms(z)

    def _state(self) -> dict[str, torch.Tensor]:
        state = super()._state()
        state.update({f"bases.{k}": v for k, v in self.bases_.state_dict().items()})
        return state

    def _set_state(self, state: dict[str, torch.Tensor]) -> None:
        super()._set_state({k: v for k, v in state.items() if not k.startswith("bases.")})
        self.bases_.load_state_dict({k[len("bases.") :]: v for k, v in state.items() if k.startswith("bases.")})
