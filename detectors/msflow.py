"""MSFlow (Zhou et al., IEEE TNNLS 2024; code ``cool-xuan/msflow``): multi-scale normalising flows.

Each backbone level, average-pooled (3x3, stride 2), goes through its own "parallel" flow of FrEIA
``AllInOneBlock`` couplings with convolutional subnets (3x3 conv - layer norm - ReLU - 3x3 conv),
conditioned on a 64-channel sine-cosine position encoding; a fusion flow (a fixed channel permutation
per scale, then one coupling whose scales and shifts mix every scale) then exchanges information
across the scales. Loss: the negative log-likelihood of all scales' outputs under a standard normal,
summed over positions and channels, averaged over the batch, gradients clipped to norm 2. The backbone
is frozen, so its pooled features of the fit images are computed once.

Maps and scores follow the repo's ``post_process.py`` defaults: per scale the log-likelihood
``-0.5 * mean_c z^2``. The *map* is the repo's "add" map (used for localisation): per scale
``exp(log p - the image's max)``, upsampled (bilinear, corners aligned), summed over scales, subtracted
from its per-image maximum. The *score* is the repo's detection score: the "mul" map (upsampled
log-likelihoods summed over scales, exponentiated relative to the image's maximum, subtracted from 1),
averaged over its top 10% pixels (``top_k``). Both normalise per image, so they do not depend on
the other images of a batch. No blur (the repo has none).

Defaults, from the reference repo: ``default.py`` / ``main.py``: pool ``avg``, parallel blocks 2/5/8,
condition 64 per scale, clamp 1.9, Adam lr 1e-4, batch 8, 25 meta-epochs x 4 sub-epochs = 100 epochs,
linear warm-up from 0.3 x lr over the first 3 meta-epochs (12 epochs) and lr x 0.33 at epochs 75 and
90 (``train.py``: LinearLR and MultiStepLR stepped once per sub-epoch); ``train.py``: gradient norm
clipped at 2; ``models/flow_models.py`` + ``models/freia_utils.py``: the flows (hard random
permutations in the parallel blocks, ``clamp * 0.636 * atan(s / clamp)`` in the fusion coupling).

Deviations, and why:

- Backbone: the paper's WideResNet-50 is not shipped; Lite0's ``layer1+layer2+layer3`` (the repo's
  WRN50 layer1..layer3, strides 4/8/16 before pooling).
- Feature scale: each pooled level is divided by the spread (std) of its training features, a fitted
  scalar, because Lite0's features are about 10x WRN50's and the flows' softplus global scale cannot
  shrink them at lr 1e-4 within the schedule; a constant per level moves every log-likelihood of that
  level by the same amount.
- The schedule's epochs are fractions of ``epochs`` (warm-up over 12%, drops at 75% and 90%), equal to
  the repo's at the default 100 and still meaningful for a short schedule; one epoch = ceil(n / batch)
  steps of random batches (the repo's shuffled loader); it steps per optimiser step, not per epoch, but
  holds its value for a whole epoch.
- The repo keeps the epoch with the best *test* score; segad keeps the last one (no test labels in fit).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

import torch
import torch.nn.functional as F
from torch import nn

from detectors.backbones import STRIDES
from detectors.base import DetectorOutput, ImageBatch, as_image_tensor
from detectors.errors import InputError
from detectors.flows import AllInOneCoupling, ClippedAdam, ConvLNSubnet, FusionCoupling
from detectors.maps import gaussian_blur, parse_layers, parse_numbers
from detectors.pfm import position_encoding
from detectors.training import TrainableConfig, TrainableDetector, load_modules, modules_state, sample_batch

POOL_TYPES = ("avg", "max", "none")
WARMUP_FROM = 0.3  # default.py: lr_warmup_from
WARMUP_SHARE = 0.12  # default.py: lr_warmup_epochs 3 meta-epochs x 4 sub-epochs of 100
DECAY_AT = (0.75, 0.90)  # default.py: lr_decay_milestones [75, 90] of 100 sub-epochs
DECAY_GAMMA = 0.33  # default.py: lr_decay_gamma


@dataclass(frozen=True)
class MSFlowConfig(TrainableConfig):
    layers: str = "layer1+layer2+layer3"
    pool_type: str = "avg"
    parallel_blocks: str = "2+5+8"  # one per level
    condition_dim: int = 64
    clamp: float = 1.9
    learning_rate: float = 1e-4
    batch_size: int = 8
    epochs: int = 100
    grad_clip: float = 2.0
    top_k: float = 0.1
    blur_sigma: float = 0.0


class MSFlowNet(nn.Module):
    """Parallel flows per scale, then a random permutation per scale and the fusion coupling."""

    def __init__(self, channels: list[int], blocks: list[int], cfg: MSFlowConfig, generator: torch.Generator) -> None:
        super().__init__()
        self.condition_dim = cfg.condition_dim
        self.parallel = nn.ModuleList(
            nn.ModuleList(
                AllInOneCoupling(c, ConvLNSubnet, cfg.condition_dim, cfg.clamp, False, generator) for _ in range(n)
            )
            for c, n in zip(channels, blocks, strict=True)
        )
        for k, c in enumerate(channels):
            self.register_buffer(f"perm{k}", torch.randperm(c, generator=generator))
        self.fusion = FusionCoupling(channels, cfg.clamp)

    def forward(self, feats: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        log_det = torch.zeros(feats[0].shape[0], device=feats[0].device)
        zs = []
        for k, (f, flow) in enumerate(zip(feats, self.parallel, strict=True)):
            b, _, h, w = f.shape
            cond = position_encoding(self.condition_dim, h, w).to(f.device).expand(b, -1, -1, -1)
            z = f
            for block in flow:
                z, ld = block(z, cond)
                log_det = log_det + ld
            zs.append(z[:, getattr(self, f"perm{k}")])
        zs, ld = self.fusion(zs)
        return zs, log_det + ld


class MSFlow(TrainableDetector):
    name = "msflow"
    config_class = MSFlowConfig
    config: MSFlowConfig

    def _validate(self, x: torch.Tensor | None = None) -> tuple[tuple[str, ...], list[int]]:
        cfg = self.config
        names = parse_layers(cfg.layers)
        blocks = parse_numbers(cfg.parallel_blocks, len(names), "parallel_blocks", int)
        if cfg.pool_type not in POOL_TYPES:
            raise InputError(f"msflow: pool_type must be one of {POOL_TYPES}, got {cfg.pool_type!r}")
        if cfg.condition_dim < 4 or cfg.condition_dim % 4:
            raise InputError(f"msflow: condition_dim must be a positive multiple of 4, got {cfg.condition_dim}")
        if not 0 < cfg.top_k <= 1:
            raise InputError(f"msflow: top_k is a share of the pixels in (0, 1], got {cfg.top_k}")
        if cfg.epochs < 1:
            raise InputError(f"msflow: epochs must be at least 1, got {cfg.epochs}")
        if x is not None:
            coarsest = max(STRIDES[n] for n in names) * (1 if cfg.pool_type == "none" else 2)
            if min(x.shape[-2:]) < coarsest:
                raise InputError(
                    f"msflow needs images of at least {coarsest}x{coarsest} for layers {cfg.layers!r} "
                    f"and pool_type {cfg.pool_type!r}; got {tuple(x.shape[-2:])}"
                )
        return names, blocks

    def _pool(self, f: torch.Tensor) -> torch.Tensor:
        if self.config.pool_type == "avg":
            return F.avg_pool2d(f, 3, 2, 1)
        if self.config.pool_type == "max":
            return F.max_pool2d(f, 3, 2, 1)
        return f

    def _build(self, channels: list[int]) -> None:
        _, blocks = self._validate()
        gen = torch.Generator().manual_seed(self.config.seed)
        self.flow_ = MSFlowNet(channels, blocks, self.config, gen).to(self.device)
        self.channels_ = list(channels)

    def fit(self, images: ImageBatch) -> Self:
        cfg = self.config
        x = as_image_tensor(images, "good images")
        self._validate(x)
        gen = self._start_training(x)
        feats = [self._pool(f) for f in self._frozen_features(x, cfg.layers)]
        self.feature_scale_ = torch.stack([f.std() for f in feats]).clamp_min(1e-6)
        feats = [f / s for f, s in zip(feats, self.feature_scale_, strict=True)]
        self._build([f.shape[1] for f in feats])
        params = list(self.flow_.parameters())
        opt = ClippedAdam(params, lr=cfg.learning_rate, max_norm=cfg.grad_clip)
        steps_per_epoch = -(-len(x) // cfg.batch_size)

        def lr_factor(step: int) -> float:
            epoch = step // steps_per_epoch
            warm = min(1.0, epoch / (WARMUP_SHARE * cfg.epochs))
            return (WARMUP_FROM + (1 - WARMUP_FROM) * warm) * DECAY_GAMMA ** sum(
                epoch >= share * cfg.epochs for share in DECAY_AT
            )

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)

        def loss(step: int) -> torch.Tensor:
            idx = sample_batch(len(x), cfg.batch_size, gen)
            zs, log_det = self.flow_([f[idx].to(self.device, non_blocking=True) for f in feats])
            return (sum(0.5 * z.float().pow(2).sum(dim=(1, 2, 3)) for z in zs) - log_det).mean()

        self._train("train", loss, {"flow": self.flow_}, opt, cfg.epochs * steps_per_epoch, gen, scheduler=sched)
        self.image_size_ = tuple(x.shape[-2:])
        return self

    def predict(self, images: ImageBatch) -> DetectorOutput:
        x = as_image_tensor(images)
        self._check_fitted(x)
        self.flow_.eval()
        names = parse_layers(self.config.layers)
        scale = self.feature_scale_.to(self.device)
        maps, scores = [], []
        for batch in self._batches(x, "predict"):
            with torch.inference_mode():
                feats = self.backbone(batch, names)
                zs, _ = self.flow_([self._pool(feats[n].float()) / scale[k] for k, n in enumerate(names)])
                m, s = self._map_and_score([-0.5 * z.float().pow(2).mean(1, keepdim=True) for z in zs])
            maps.append(m.cpu())
            scores.append(s.cpu())
        return DetectorOutput(torch.cat(maps).numpy(), torch.cat(scores).numpy())

    def _map_and_score(self, log_ps: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """post_process.py: the "add" map and the top-k mean of the "mul" map, per image."""
        size = self.image_size_

        def up(t: torch.Tensor) -> torch.Tensor:
            return F.interpolate(t, size=size, mode="bilinear", align_corners=True)[:, 0]

        def image_max(t: torch.Tensor) -> torch.Tensor:
            return t.flatten(1).amax(1).view(-1, *([1] * (t.ndim - 1)))

        prob = sum(up(torch.exp(lp - image_max(lp))) for lp in log_ps)
        add_map = image_max(prob) - prob
        log_sum = sum(up(lp) for lp in log_ps)
        mul_map = 1.0 - torch.exp(log_sum - image_max(log_sum))
        k = max(1, int(size[0] * size[1] * self.config.top_k))
        score = mul_map.flatten(1).topk(k, dim=1).values.mean(1)
        return gaussian_blur(add_map, self.config.blur_sigma).float(), score.float()

    def _state(self) -> dict[str, torch.Tensor]:
        return {
            **modules_state({"flow": self.flow_}),
            "channels_": torch.tensor(self.channels_, dtype=torch.int64),
            "feature_scale_": self.feature_scale_,
        }

    def _set_state(self, state: dict[str, torch.Tensor]) -> None:
        self._build([int(c) for c in state.pop("channels_").tolist()])
        self.feature_scale_ = state.pop("feature_scale_")
        load_modules({"flow": self.flow_}, state)
