"""CFlow-AD (Gudovskiy, Ishizaka & Kozuka, WACV 2022; code ``gudovskiy/cflow-ad``): per backbone level a
conditional normalising flow learns the likelihood of good patch vectors given where the patch sits.

Each level's flow is a stack of FrEIA ``AllInOneBlock`` couplings (``detectors.flows``) with
fully-connected subnets, each conditioned on a 2-D sine-cosine position encoding of the patch's place
(128 channels). It is trained on random batches of 256 patch vectors ("fibers") drawn from every
training image, by the repo's loss ``-log sigmoid(log p(x | position) / C)``. The backbone is frozen,
so its features of the fit images are computed once.

Map: per level the log-likelihood per dimension, turned into a probability ``exp(log p - ref)``,
upsampled (bilinear, corners aligned, as the repo), summed over levels and inverted, so higher is more
anomalous; score = its maximum (the repo's detection score).

Defaults, from the reference repo: 8 coupling blocks, clamp 1.9 (``main.py``: ``clamp_alpha``), condition
128 (``condition_vec``), fiber batch N = 256 (``train.py``), FC subnet width 2x its input and
soft (random orthogonal) permutations (``model.py``: ``subnet_fc``, ``freia_cflow_head``), Adam at lr 2e-4
(``config.py``), 25 meta-epochs of 8 sub-epochs (``config.py``) with the repo's schedule
(``main.py`` + ``custom_models/utils.py``): cosine over the meta-epochs from lr to lr x 1e-3, and a
linear warm-up from lr / 10 over the first 2 meta-epochs; no blur (the repo has none).

Deviations, and why:

- Backbone: the paper's WideResNet-50 is not shipped; Lite0's ``layer2+layer3+layer4`` stand in for
  the repo's three pooled levels (WRN50's layer2..layer4, strides 8/16/32).
- Feature scale: each level is divided by the spread (std) of its training features, a fitted scalar.
  Lite0's features are about 10x WRN50's, and at lr 2e-4 the flows' softplus global scale (init 1)
  would need tens of thousands of steps to shrink them; on WRN50 the repo needs no such step. A
  constant per level changes every log-likelihood of that level by the same amount, so no ranking.
- One epoch (sub-epoch) here = per level ceil(n_images x h x w / 256) steps of one fiber batch at that
  level, the levels one after the other, as the repo's per-image-batch loop does; fibers are drawn at
  random from all training images (the repo shuffles them inside each 32-image batch), so
  ``batch_size`` only batches images through the backbone and the flows.
- Probability normalisation: the repo subtracts the maximum log-likelihood over the *test set* per
  level and inverts by the test set's maximum; segad's ``predict`` must not depend on which images
  share a batch, so the reference is each level's maximum over the *training* patches (fitted), the
  exponent capped at 0, and the map is ``levels - sum of probabilities`` (the same ranking inside one
  test set as the repo's whenever the constants agree; maps lie in [0, levels]).
- The repo keeps the epoch with the best *test* AUROC; segad keeps the last one (no test labels in fit).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import ClassVar, Self

import torch
import torch.nn.functional as F
from torch import nn

from detectors.base import DetectorOutput, ImageBatch, as_image_tensor
from detectors.errors import InputError
from detectors.flows import AllInOneCoupling, fc_subnet
from detectors.maps import gaussian_blur, parse_layers
from detectors.pfm import position_encoding
from detectors.training import TrainableConfig, TrainableDetector, load_modules, modules_state, sample_batch

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
WARM_META_EPOCHS = 2  # main.py: lr_warm_epochs
WARM_FROM = 0.1  # main.py: lr_warmup_from = lr / 10
COSINE_FLOOR = 1e-3  # main.py: eta_min = lr * lr_decay_rate ** 3, lr_decay_rate 0.1


@dataclass(frozen=True)
class CFlowConfig(TrainableConfig):
    RESULT_NEUTRAL: ClassVar[Mapping[str, str]] = MappingProxyType(
        {
            **TrainableConfig.RESULT_NEUTRAL,
            "batch_size": "only how many images go through the frozen backbone (and the flows at predict time) "
            "at once; training batches are fiber_batch patch vectors drawn from all training images, and each "
            "patch's likelihood does not depend on the other images of its batch",
        }
    )

    layers: str = "layer2+layer3+layer4"
    coupling_blocks: int = 8
    clamp: float = 1.9
    condition_dim: int = 128
    fiber_batch: int = 256
    learning_rate: float = 2e-4
    meta_epochs: int = 25
    sub_epochs: int = 8
    blur_sigma: float = 0.0


class ConditionalFlow(nn.Module):
    """One level's flow over patch vectors (N, C), conditioned on their position encodings (N, P)."""

    def __init__(self, channels: int, cfg: CFlowConfig, generator: torch.Generator) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            AllInOneCoupling(channels, fc_subnet, cfg.condition_dim, cfg.clamp, True, generator)
            for _ in range(cfg.coupling_blocks)
        )

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Log-likelihood per dimension of each patch vector, (N,)."""
        log_det = torch.zeros(x.shape[0], device=x.device)
        z = x
        for block in self.blocks:
            z, ld = block(z, cond)
            log_det = log_det + ld
        c = x.shape[1]
        return (-c * _LOG_SQRT_2PI - 0.5 * z.float().pow(2).sum(1) + log_det) / c


def _fibers(f: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B * h * w, C), image-major then row-major positions."""
    return f.permute(0, 2, 3, 1).reshape(-1, f.shape[1])


class CFlow(TrainableDetector):
    name = "cflow"
    config_class = CFlowConfig
    config: CFlowConfig

    def _validate(self, x: torch.Tensor) -> tuple[str, ...]:
        cfg = self.config
        names = parse_layers(cfg.layers)
        self._require_size(x, names, cells=1)
        if cfg.condition_dim < 4 or cfg.condition_dim % 4:
            raise InputError(f"cflow: condition_dim must be a positive multiple of 4, got {cfg.condition_dim}")
        for option in ("coupling_blocks", "fiber_batch", "meta_epochs", "sub_epochs"):
            if getattr(cfg, option) < 1:
                raise InputError(f"cflow: {option} must be at least 1, got {getattr(cfg, option)}")
        return names

    def _build(self, channels: list[int]) -> None:
        gen = torch.Generator().manual_seed(self.config.seed)
        self.flows_ = nn.ModuleList(ConditionalFlow(c, self.config, gen) for c in channels).to(self.device)
        self.channels_ = list(channels)

    def _condition(self, h: int, w: int) -> torch.Tensor:
        """(h * w, P) position encodings, row-major, on the device."""
        return _fibers(position_encoding(self.config.condition_dim, h, w)[None]).to(self.device)

    def fit(self, images: ImageBatch) -> Self:
        cfg = self.config
        x = as_image_tensor(images, "good images")
        self._validate(x)
        gen = self._start_training(x)
        feats = self._frozen_features(x, cfg.layers)
        self.feature_scale_ = torch.stack([f.std() for f in feats]).clamp_min(1e-6)
        self._build([f.shape[1] for f in feats])
        fibers = [_fibers(f) / s for f, s in zip(feats, self.feature_scale_, strict=True)]
        conds = [self._condition(*f.shape[-2:]) for f in feats]
        positions = [f.shape[-2] * f.shape[-1] for f in feats]
        per_level = [-(-len(fb) // cfg.fiber_batch) for fb in fibers]
        bounds = torch.tensor(per_level).cumsum(0).tolist()
        steps_per_epoch = bounds[-1]
        steps_per_meta = cfg.sub_epochs * steps_per_epoch
        opt = torch.optim.Adam(self.flows_.parameters(), lr=cfg.learning_rate)

        def lr_factor(step: int) -> float:
            meta = step // steps_per_meta
            if meta < WARM_META_EPOCHS:
                warm_to = _cosine(WARM_META_EPOCHS, cfg.meta_epochs)
                return WARM_FROM + step / (WARM_META_EPOCHS * steps_per_meta) * (warm_to - WARM_FROM)
            return _cosine(meta, cfg.meta_epochs)

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)

        def loss(step: int) -> torch.Tensor:
            r = step % steps_per_epoch
            level = next(k for k, b in enumerate(bounds) if r < b)
            idx = sample_batch(len(fibers[level]), cfg.fiber_batch, gen)
            e = fibers[level][idx].to(self.device, non_blocking=True)
            c = conds[level][idx % positions[level]]
            return -F.logsigmoid(self.flows_[level](e, c)).mean()

        steps = cfg.meta_epochs * steps_per_meta
        self._train("train", loss, {"flows": self.flows_}, opt, steps, gen, scheduler=sched)
        self.log_prob_max_ = torch.stack(
            [self._max_log_prob(flow, fb, c) for flow, fb, c in zip(self.flows_, fibers, conds, strict=True)]
        )
        self.image_size_ = tuple(x.shape[-2:])
        return self

    def _max_log_prob(self, flow: ConditionalFlow, fibers: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """A level's fixed reference for its probabilities: the likeliest training patch's log-likelihood."""
        per_image = len(cond)
        chunk = per_image * max(1, 65536 // per_image)  # whole images, so positions line up with ``cond``
        conds = cond.repeat(chunk // per_image, 1)
        best = torch.tensor(-math.inf)
        with torch.inference_mode():
            for s in range(0, len(fibers), chunk):
                part = fibers[s : s + chunk].to(self.device)
                best = torch.maximum(best, flow(part, conds[: len(part)]).max().cpu())
        return best

    def predict(self, images: ImageBatch) -> DetectorOutput:
        return self._predict_maps(images, self._map_fn)

    def _map_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        self.flows_.eval()
        names = parse_layers(self.config.layers)
        scale = self.feature_scale_.to(self.device)
        ref = self.log_prob_max_.to(self.device)

        def anomaly_map(batch: torch.Tensor) -> torch.Tensor:
            feats = self.backbone(batch, names)
            prob = torch.zeros(batch.shape[0], 1, *self.image_size_, device=batch.device)
            for level, (flow, n) in enumerate(zip(self.flows_, names, strict=True)):
                f = feats[n].float() / scale[level]
                b, _, h, w = f.shape
                cond = self._condition(h, w).repeat(b, 1)
                log_p = flow(_fibers(f), cond).view(b, 1, h, w)
                p = torch.exp((log_p - ref[level]).clamp(max=0.0))
                prob = prob + F.interpolate(p, size=self.image_size_, mode="bilinear", align_corners=True)
            return gaussian_blur(len(names) - prob[:, 0], self.config.blur_sigma)

        return anomaly_map

    def _state(self) -> dict[str, torch.Tensor]:
        return {
            **modules_state({"flows": self.flows_}),
            "channels_": torch.tensor(self.channels_, dtype=torch.int64),
            "feature_scale_": self.feature_scale_,
            "log_prob_max_": self.log_prob_max_,
        }

    def _set_state(self, state: dict[str, torch.Tensor]) -> None:
        self._build([int(c) for c in state.pop("channels_").tolist()])
        self.feature_scale_ = state.pop("feature_scale_")
        self.log_prob_max_ = state.pop("log_prob_max_")
        load_modules({"flows": self.flows_}, state)


def _cosine(meta_epoch: int, meta_epochs: int) -> float:
    """custom_models/utils.py's adjust_learning_rate (cosine), as a factor of the base lr."""
    return COSINE_FLOOR + (1 - COSINE_FLOOR) * (1 + math.cos(math.pi * meta_epoch / meta_epochs)) / 2
