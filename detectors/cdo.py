"""CDO (Cao et al., IEEE TII 2023, "Collaborative Discrepancy Optimization for Reliable Image Anomaly
Localization"): a student learns the frozen teacher's multi-level features on good pixels *and* learns to
miss them on synthetic anomalies, so the teacher-student discrepancy separates the two with a margin.

* Teacher: the frozen pretrained backbone's levels; student: the same architecture, randomly initialised
  and trained from scratch on images (the paper's "expert" and "apprentice").
* Discrepancy per feature: ``||t/|t| - s/|s|||^2`` (= 2 - 2 cos), after bringing every level to the
  finest level's grid (bilinear, ``align_corners=True``, as the repo).
* MOM (margin optimisation): each training image gets a synthetic anomaly with probability
  ``anomaly_probability``; the loss is the discrepancy of normal pixels minus that of anomalous pixels,
  ``(sum w_n d_n - sum w_a d_a) / (sum w_n + sum w_a) * B`` per level, summed over levels.
* OOM (overlap optimisation): weights ``w_n = (d_n / mean d_n)^gamma`` on normal pixels (hard ones count
  more) and ``w_a = (mean d_a / d_a)^gamma`` on anomalous pixels (the ones the student already misses
  count less), detached, so training works on where the two distributions overlap.

Map: per-level discrepancy on the finest level's grid, each upsampled to the image, summed, blurred
(sigma 4); score = its max. Defaults from the paper's code (caoyunkang/CDO, ``train.py``,
``models/CDO.py``, ``utils/training_utils.py``, ``datasets/dataset.py``): 50 epochs at batch 16, AdamW
lr 4e-4 with weight decay 1e-4, the lr x0.95 after every epoch, gamma 2, MOM and OOM on. One epoch here
is ceil(n / batch_size) random batches.

Deviations and why:

* Backbone: EfficientNet-Lite0 ``layer1+layer2+layer3`` (strides 4, 8, 16) instead of HRNet-32's first
  three branches (strides 4, 8, 16): HRNet weights cannot be downloaded here. The student is Lite0's
  architecture up to ``layer3``, randomly initialised (the paper's is a whole HRNet-32): about 0.7 M
  parameters, affordable on a CPU. Its batch norms use torch's momentum 0.1, not the TF port's 0.01,
  which suits weights that train from scratch. Any backbone that ``detectors.backbones`` builds works.
* Synthetic anomalies: ``detectors.synthesis``'s DRAEM recipe (Perlin mask, another good training image
  jittered as the texture, opacity ``beta``), the same anomalies DRAEM and SegAD's generator use, where
  the paper pastes 0-4 rectangles of uniform noise (sides h/20 to h/5). The paper draws 0 rectangles
  for 1 image in 5, hence ``anomaly_probability=0.8``.
* The paper evaluates on the test set every 5 epochs and saves the model each time; the last epoch's
  weights are kept here too (it saves unconditionally), without looking at test data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Self

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from detectors.backbones import LAYERS, STRIDES, Backbone, EfficientNetLite0, from_unit, to_unit
from detectors.base import DetectorOutput, ImageBatch, as_image_tensor
from detectors.draem import synthesise
from detectors.errors import InputError
from detectors.maps import gaussian_blur, parse_layers
from detectors.training import TrainableConfig, TrainableDetector, load_modules, modules_state, sample_batch


@dataclass(frozen=True)
class CDOConfig(TrainableConfig):
    layers: str = "layer1+layer2+layer3"
    epochs: int = 50
    learning_rate: float = 4e-4
    weight_decay: float = 1e-4
    lr_decay: float = 0.95  # per epoch (the repo's ExponentialLR)
    gamma: float = 2.0
    mom: bool = True  # train on synthetic anomalies too (margin optimisation)
    oom: bool = True  # re-weight by discrepancy (overlap optimisation)
    anomaly_probability: float = 0.8
    blur_sigma: float = 4.0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise InputError(f"cdo: epochs must be at least 1, got {self.epochs}")
        if not 0.0 <= self.anomaly_probability <= 1.0:
            raise InputError(f"cdo: anomaly_probability must be in [0, 1], got {self.anomaly_probability}")
        if not 0.0 < self.lr_decay <= 1.0:
            raise InputError(f"cdo: lr_decay must be in (0, 1], got {self.lr_decay}")
        if self.gamma < 0:
            raise InputError(f"cdo: gamma must be >= 0, got {self.gamma}")


# --- the student ------------------------------------------------------------------------------
def untrained_student(backbone: str, last: str) -> Backbone:
    """The backbone's architecture up to level ``last``, randomly initialised, its batch norms trainable."""
    if backbone == "efficientnet_lite0":
        net: Backbone = EfficientNetLite0()
        keep = max(i for i, name in net._LEVEL_ENDS.items() if LAYERS.index(name) <= LAYERS.index(last))
        net._blocks = nn.ModuleList(list(net._blocks)[: keep + 1])
        del net._conv_head, net._bn1, net._fc  # the classifier head: never reached
    elif backbone in ("resnet18", "wide_resnet50_2"):
        import torchvision

        from detectors.backbones import _TorchvisionResNet

        tv = torchvision.models.get_model(backbone, weights=None)
        for name in LAYERS[LAYERS.index(last) + 1 :]:
            setattr(tv, name, nn.Identity())
        tv.fc = nn.Identity()
        net = _TorchvisionResNet(backbone, tv)
    else:
        raise InputError(f"cdo: no untrained student for backbone {backbone!r}; use efficientnet_lite0 or a ResNet")
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = 0.1
    return net


# --- the loss ---------------------------------------------------------------------------------
def _on_grid(feats: list[torch.Tensor]) -> list[torch.Tensor]:
    """Every level brought to the first (finest) level's grid, as the repo (bilinear, align_corners=True)."""
    size = feats[0].shape[-2:]
    return [
        f if f.shape[-2:] == size else F.interpolate(f, size=size, mode="bilinear", align_corners=True) for f in feats
    ]


def discrepancy(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) pairs -> (B, h, w) squared distance of the unit-normalised features, in [0, 4]."""
    return (F.normalize(teacher.float(), dim=1) - F.normalize(student.float(), dim=1)).square().sum(1)


def _oom_weights(d: torch.Tensor, gamma: float, normal: bool) -> torch.Tensor:
    """OOM's weights, detached: hard normal features (large d) and hard anomalous ones (small d) count more."""
    if d.numel() == 0:
        return d
    d = d.detach().clamp_min(1e-12)  # an anomalous feature the student matches exactly: a large, finite weight
    ratio = d / d.mean() if normal else d.mean() / d
    return ratio**gamma


def cdo_loss(
    teacher: list[torch.Tensor], student: list[torch.Tensor], anomalous: torch.Tensor | None, gamma: float, oom: bool
) -> torch.Tensor:
    """Sum over levels of (weighted normal discrepancy - weighted anomalous discrepancy) / total weight * B.

    ``anomalous`` is a (B, 1, H, W) 0/1 mask at image size (nearest-resized to the feature grid) or None.
    """
    total = teacher[0].new_zeros((), dtype=torch.float32)
    for t, s in zip(_on_grid(teacher), _on_grid(student), strict=True):
        d = discrepancy(t, s)
        b = d.shape[0]
        if anomalous is None:
            is_anomalous = torch.zeros_like(d, dtype=torch.bool)
        else:
            is_anomalous = F.interpolate(anomalous.float(), size=d.shape[-2:], mode="nearest")[:, 0] > 0
        d_n, d_a = d[~is_anomalous], d[is_anomalous]
        if oom:
            w_n, w_a = _oom_weights(d_n, gamma, normal=True), _oom_weights(d_a, gamma, normal=False)
        else:
            w_n, w_a = torch.ones_like(d_n), torch.ones_like(d_a)
        total = total + ((w_n * d_n).sum() - (w_a * d_a).sum()) / (w_n.sum() + w_a.sum()) * b
    return total


# --- the detector -----------------------------------------------------------------------------
class CDO(TrainableDetector):
    name = "cdo"
    config_class = CDOConfig
    config: CDOConfig

    def _names(self) -> tuple[str, ...]:
        names = parse_layers(self.config.layers)
        unknown = sorted(set(names) - set(STRIDES))
        if unknown:
            raise InputError(f"cdo: unknown layers {unknown}; choose from {list(LAYERS)}")
        return names

    def _build(self) -> None:
        names = self._names()
        torch.manual_seed(self.config.seed)
        deepest = max(names, key=LAYERS.index)
        self.student_ = untrained_student(self.config.backbone, deepest).to(self.device)

    def _check_input(self, x: torch.Tensor) -> None:
        self._require_size(x, self._names(), why=" (two features on the coarsest level)")

    def fit(self, images: ImageBatch) -> Self:
        x = as_image_tensor(images, "good images")
        self._check_input(x)
        cfg = self.config
        if len(x) < 2 and cfg.mom and cfg.anomaly_probability > 0:
            raise InputError(
                "cdo needs at least two good images: a synthetic anomaly's texture is another good image "
                "(or set mom=False to train on good images only)"
            )
        gen = self._start_training(x)
        self._build()
        names = self._names()
        pool = to_unit(x).permute(0, 2, 3, 1).contiguous().numpy()  # (N, H, W, 3) in [0, 1] for the generator
        opt = torch.optim.AdamW(self.student_.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        steps_per_epoch = -(-len(x) // cfg.batch_size)
        # The repo's ExponentialLR stepped once per epoch, as a LambdaLR of the step (plain numbers, checkpoint-safe).
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cfg.lr_decay ** (s // steps_per_epoch))

        def loss(step: int) -> torch.Tensor:
            idx = sample_batch(len(pool), cfg.batch_size, gen).numpy()
            good = pool[idx]
            if cfg.mom:
                rng = np.random.default_rng(int(torch.randint(2**31, (1,), generator=gen)))
                inputs, masks = synthesise(good, idx, pool, cfg.anomaly_probability, rng)
                anomalous = torch.from_numpy(masks)[:, None].to(self.device)
            else:
                inputs, anomalous = good, None
            batch = from_unit(torch.from_numpy(inputs).permute(0, 3, 1, 2)).to(self.device)
            with torch.no_grad():
                t = self.backbone(batch, names)
            s = self.student_(batch, names)
            return cdo_loss([t[n] for n in names], [s[n] for n in names], anomalous, cfg.gamma, cfg.oom)

        self._train("train", loss, self._modules(), opt, cfg.epochs * steps_per_epoch, gen, scheduler=sched)
        self.image_size_ = tuple(x.shape[-2:])
        return self

    def predict(self, images: ImageBatch) -> DetectorOutput:
        return self._predict_maps(images, self._map_fn)

    def _map_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """Run once the input is validated: eval mode, then the per-batch map."""
        self.student_.eval()
        names = self._names()

        def anomaly_map(batch: torch.Tensor) -> torch.Tensor:
            t, s = self.backbone(batch, names), self.student_(batch, names)
            teacher, student = _on_grid([t[n] for n in names]), _on_grid([s[n] for n in names])
            m = sum(
                F.interpolate(discrepancy(a, b)[:, None], size=self.image_size_, mode="bilinear", align_corners=False)
                for a, b in zip(teacher, student, strict=True)
            )[:, 0]
            return gaussian_blur(m, self.config.blur_sigma)

        return anomaly_map

    def _modules(self) -> dict[str, nn.Module]:
        return {"student": self.student_}

    def _state(self) -> dict[str, torch.Tensor]:
        return modules_state(self._modules())

    def _set_state(self, state: dict[str, torch.Tensor]) -> None:
        self._build()
        load_modules(self._modules(), state)


__all__ = ["CDO", "CDOConfig", "cdo_loss", "discrepancy", "untrained_student"]
