"""EfficientAD (Batzner et al., WACV 2024): a student and an autoencoder learn to imitate a small
patch-description network (PDN, the "teacher") on good images; where the student fails to follow
the teacher (local anomalies) or fails to follow the autoencoder (logical anomalies), the image is
anomalous.

Fit runs two phases of ``detectors.training``'s loop (seeded, bfloat16 on a GPU, checkpoints):

1. ``teacher``: the teacher PDN is distilled from the frozen pretrained backbone.
2. ``student``: student and autoencoder train together (one Adam, lr x0.1 after 95% of steps) on
   the paper's three losses: the hard-feature student-teacher loss, autoencoder-teacher, and
   autoencoder-student on the student's second half of channels.

Afterwards the two maps' 0.9 and 0.995 quantiles on held-out good images fix the paper's map
normalisation, ``0.1 * (m - q_a) / (q_b - q_a)``; the normalised maps are averaged, upsampled
bilinearly to the image and blurred. The image score is the map's maximum.

Differences from the paper, and why:

- The paper distils one teacher from WideResNet-101 on ImageNet and reuses it everywhere. ImageNet
  is not available here, so the teacher is distilled per fit on the (augmented) training images
  from ``teacher_layers`` of ``self.backbone`` (EfficientNet-Lite0 by default): those levels are
  upsampled to the PDN grid, concatenated, standardised per channel over the training images and,
  when their channel count differs from ``out_channels``, mapped by a fixed seeded semi-orthogonal
  projection (distances are preserved up to scale, and the PDN keeps the paper's 384 outputs).
- There is no ImageNet penalty set, so the student's ImageNet penalty term is left out.
- Batches of ``batch_size`` random images instead of the paper's batch of one for 70,000 steps.
- The PDN pads its convolutions so its grid is image/4 (64x64 at 256 px) and needs no cropping:
  the first convolution pads 2 px before and 4 after, which centres output cell ``i`` on input
  pixel ``4i + 1``, half a pixel from where bilinear upsampling puts it (``4i + 1.5``); the paper's
  symmetric padding of 3 would be 1.5 px off.
- The autoencoder's sizes follow the image size (any side >= 64) instead of being fixed for 256 px.

Defaults aim at a GPU: 3,000 teacher steps and 5,000 student steps at batch 16 (80,000 image views,
a little more than the paper's 70,000 at batch 1) take minutes for ``small``. On a CPU, pass small
``teacher_steps``/``steps`` (and ``out_channels``, ``pdn_width``) for quick experiments.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Self

import torch
import torch.nn.functional as F
from torch import nn

from detectors.backbones import from_unit, to_unit
from detectors.base import DetectorOutput, ImageBatch, as_image_tensor
from detectors.errors import InputError
from detectors.maps import ChannelStats, parse_layers, semi_orthogonal, to_image_maps
from detectors.training import TrainableConfig, TrainableDetector, sample_batch

MODEL_SIZES = ("small", "medium")
MIN_IMAGE_SIZE = 64  # the autoencoder's five stride-2 convolutions need at least 2x2 at the bottom
_QUANTILE_A, _QUANTILE_B = 0.9, 0.995  # the paper's map-normalisation quantiles


@dataclass(frozen=True)
class EfficientADConfig(TrainableConfig):
    model_size: str = "small"
    out_channels: int = 384
    pdn_width: int = 128  # the first convolution's channels; 128 is the paper's (medium doubles it)
    teacher_layers: str = "layer2+layer3"
    teacher_steps: int = 3000
    steps: int = 5000
    learning_rate: float = 1e-4
    weight_decay: float = 1e-5
    hard_quantile: float = 0.999
    validation_share: float = 0.1
    blur_sigma: float = 4.0

    def __post_init__(self) -> None:
        if self.model_size not in MODEL_SIZES:
            raise InputError(f"model_size must be one of {MODEL_SIZES}, got {self.model_size!r}")
        if self.pdn_width < 1:
            raise InputError(f"pdn_width must be at least 1, got {self.pdn_width}")
        if self.out_channels < 1:
            raise InputError(f"out_channels must be at least 1, got {self.out_channels}")
        if not 0.0 < self.hard_quantile < 1.0:
            raise InputError(f"hard_quantile must be in (0, 1), got {self.hard_quantile}")
        if not 0.0 < self.validation_share < 1.0:
            raise InputError(f"validation_share must be in (0, 1), got {self.validation_share}")


# --- networks -------------------------------------------------------------------------------------


def pdn(model_size: str, out_channels: int, width: int = 128) -> nn.Sequential:
    """The patch description network (33 px receptive field), padded so its grid is image/4.

    ``width`` 128 gives the paper's channels (128, 256 small; 256, 512 medium); tests shrink it."""
    a = width if model_size == "small" else 2 * width
    b = 2 * a
    layers: list[nn.Module] = [
        nn.ZeroPad2d((2, 4, 2, 4)),  # 6 px in all, as the paper's padding 3, but better centred (see above)
        nn.Conv2d(3, a, 4),
        nn.ReLU(inplace=True),
        nn.AvgPool2d(2, 2, padding=1, count_include_pad=False),
        nn.Conv2d(a, b, 4, padding=3),
        nn.ReLU(inplace=True),
        nn.AvgPool2d(2, 2, padding=1, count_include_pad=False),
    ]
    if model_size == "medium":
        layers += [nn.Conv2d(b, b, 1), nn.ReLU(inplace=True)]
    layers += [nn.Conv2d(b, b, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(b, out_channels, 4)]
    if model_size == "medium":
        layers += [nn.ReLU(inplace=True), nn.Conv2d(out_channels, out_channels, 1)]
    return nn.Sequential(*layers)


def pdn_grid(size: tuple[int, int]) -> tuple[int, int]:
    """The PDN's output grid for an image size (``ceil(side / 4)``, e.g. 64x64 at 256 px)."""

    def side(n: int) -> int:
        n = (n + 6 - 3) // 2 + 1  # conv 4x4 on 6 px of padding, then 2x2 average pool padded 1
        n = (n + 6 - 3) // 2 + 1
        return n - 3  # conv 3x3 padded 1, conv 4x4 unpadded

    return side(size[0]), side(size[1])


class Autoencoder(nn.Module):
    """Strided-conv encoder to a 64-d code, bilinear-upsampling decoder to the PDN grid.

    The paper's layer sizes are for 256 px (an 8x8 last encoder kernel, upsampling via 3, 8, 15,
    32, 63, 127); here the last kernel is whatever the five stride-2 convolutions leave, and the
    decoder's intermediate sizes are ``side / 2**k - 1`` for k = 6..1, so any image >= 64 px works.
    """

    def __init__(self, image_size: tuple[int, int], grid: tuple[int, int], out_channels: int) -> None:
        super().__init__()
        enc: list[nn.Module] = []
        cin, (h, w) = 3, image_size
        for c in (32, 32, 64, 64, 64):
            enc += [nn.Conv2d(cin, c, 4, 2, 1), nn.ReLU(inplace=True)]
            cin, h, w = c, h // 2, w // 2
        enc.append(nn.Conv2d(64, 64, (h, w)))  # the whole remaining field -> a 1x1 code
        self.encoder = nn.Sequential(*enc)
        self.sizes = [
            (max(1, round(image_size[0] / 2**k) - 1), max(1, round(image_size[1] / 2**k) - 1)) for k in range(6, 0, -1)
        ]
        self.ups = nn.ModuleList(
            nn.Sequential(nn.Conv2d(64, 64, 4, 1, 2), nn.ReLU(inplace=True), nn.Dropout(0.2)) for _ in self.sizes
        )
        self.grid = grid
        self.head = nn.Sequential(
            nn.Conv2d(64, 64, 3, 1, 1), nn.ReLU(inplace=True), nn.Conv2d(64, out_channels, 3, 1, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.encoder(x)
        for size, up in zip(self.sizes, self.ups, strict=True):
            z = up(F.interpolate(z, size=size, mode="bilinear", align_corners=False))
        return self.head(F.interpolate(z, size=self.grid, mode="bilinear", align_corners=False))


# --- augmentation ---------------------------------------------------------------------------------


def _uniform(n: int, low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen)


def _colour(
    x: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor, saturation: torch.Tensor
) -> torch.Tensor:
    """Per-image brightness/contrast/saturation factors, applied in [0, 1] pixel space."""
    weights = x.new_tensor((0.299, 0.587, 0.114)).view(1, 3, 1, 1)

    def f(v: torch.Tensor) -> torch.Tensor:
        return v.to(x.device, x.dtype).view(-1, 1, 1, 1)

    y = (to_unit(x) * f(brightness)).clamp(0, 1)
    grey = (y * weights).sum(1, keepdim=True)
    y = ((y - grey.mean((2, 3), keepdim=True)) * f(contrast) + grey.mean((2, 3), keepdim=True)).clamp(0, 1)
    grey = (y * weights).sum(1, keepdim=True)
    y = ((y - grey) * f(saturation) + grey).clamp(0, 1)
    return from_unit(y)


def teacher_augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random crop (60-100% of the side) resized back, flips, brightness and contrast, per image.

    Makes the teacher see patches at varied scales, orientations and exposures, a small stand-in
    for the variety of ImageNet it is distilled on in the paper.
    """
    n = x.shape[0]
    scale = _uniform(n, 0.6, 1.0, gen)
    flips = torch.where(torch.rand(n, 2, generator=gen) < 0.5, -1.0, 1.0)
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * (1 - scale)[:, None]
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = scale * flips[:, 0], scale * flips[:, 1]
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    ones = torch.ones(n)
    return _colour(x, _uniform(n, 0.8, 1.2, gen), _uniform(n, 0.8, 1.2, gen), ones)


def autoencoder_augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The paper's autoencoder augmentation: one of brightness, contrast or saturation, x0.8-1.2."""
    n = x.shape[0]
    factors = torch.ones(n, 3)
    factors[torch.arange(n), torch.randint(0, 3, (n,), generator=gen)] = _uniform(n, 0.8, 1.2, gen)
    return _colour(x, factors[:, 0], factors[:, 1], factors[:, 2])


# --- helpers --------------------------------------------------------------------------------------


def quantile(values: torch.Tensor, q: float) -> torch.Tensor:
    """Linear-interpolated quantile of all values by sorting (``torch.quantile`` caps at 16M values)."""
    v = values.flatten().float().sort().values
    pos = q * (v.numel() - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, v.numel() - 1)
    return v[lo] + (pos - lo) * (v[hi] - v[lo])


def hard_mean(d: torch.Tensor, q: float) -> torch.Tensor:
    """Mean of the values at or above the q-quantile: the paper's hard-feature loss, via top-k."""
    flat = d.flatten()
    n = flat.numel()
    k = max(1, n - math.ceil(q * (n - 1) - 1e-9))  # how many sorted values sit at or after position q(n-1)
    return flat.topk(k, sorted=False).values.mean()


def _projection(channels: int, out_channels: int, seed: int) -> torch.Tensor | None:
    """A fixed (out, channels) semi-orthogonal map, scaled so each output keeps about unit variance."""
    if channels == out_channels:
        return None
    return semi_orthogonal(channels, out_channels, seed) * math.sqrt(max(1.0, out_channels / channels))


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


# --- the detector ---------------------------------------------------------------------------------


class EfficientAD(TrainableDetector):
    name = "efficientad"
    version = 1
    config_class = EfficientADConfig
    config: EfficientADConfig

    def _build(self, image_size: tuple[int, int]) -> None:
        c, size = self.config.out_channels, self.config.model_size
        # Channels-last: faster convolutions on CPU (oneDNN) and on GPU tensor cores alike.
        nhwc = {"device": self.device, "memory_format": torch.channels_last}
        self.teacher_ = pdn(size, c, self.config.pdn_width).to(**nhwc)
        self.student_ = pdn(size, 2 * c, self.config.pdn_width).to(**nhwc)
        self.autoencoder_ = Autoencoder(image_size, pdn_grid(image_size), c).to(**nhwc)

    def _check_input(self, x: torch.Tensor) -> None:
        if min(x.shape[-2:]) < MIN_IMAGE_SIZE:
            raise InputError(
                f"efficientad needs images of at least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE} (its autoencoder "
                f"downsamples 32x); got {tuple(x.shape[-2:])}"
            )
        if len(x) < 2:
            raise InputError(
                "efficientad needs at least two good images: some to train on and at least one held out "
                f"(validation_share={self.config.validation_share}) to normalise the maps"
            )
        names = parse_layers(self.config.teacher_layers)
        unknown = [n for n in names if n not in self.backbone.channels]
        if unknown:
            raise InputError(
                f"teacher_layers names unknown backbone levels {unknown}; choose from {sorted(self.backbone.channels)}"
            )

    # --- teacher targets ----------------------------------------------------------------------------
    def _raw_target(self, batch: torch.Tensor) -> torch.Tensor:
        """The backbone's ``teacher_layers`` at the PDN grid, concatenated: (B, C, h, w) float32."""
        names = parse_layers(self.config.teacher_layers)
        grid = pdn_grid(tuple(batch.shape[-2:]))
        with torch.inference_mode():
            feats = self.backbone(batch, names)
            return torch.cat(
                [F.interpolate(feats[n].float(), size=grid, mode="bilinear", align_corners=False) for n in names], 1
            )

    def _target(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            t = (self._raw_target(batch) - self._target_mean[:, None, None]) / self._target_std[:, None, None]
            if self._projection is not None:
                t = torch.einsum("oc,bchw->bohw", self._projection, t)
        return t.clone()  # out of inference mode, so the loss can use it

    # --- normalised outputs -----------------------------------------------------------------------
    def _teacher_features(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t = self.teacher_(batch).float()
            return (t - self.teacher_mean_.view(1, -1, 1, 1)) / self.teacher_std_.view(1, -1, 1, 1)

    def _raw_maps(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, h, w) student-teacher and autoencoder-student maps at the PDN grid."""
        c = self.config.out_channels
        batch = _nhwc(batch)
        with torch.inference_mode():
            t = self._teacher_features(batch)
            s = self.student_(batch).float()
            ae = self.autoencoder_(batch).float()
            st = ((t - s[:, :c]) ** 2).mean(1)
            aes = ((ae - s[:, c:]) ** 2).mean(1)
        return st, aes

    def _eval(self) -> None:
        for m in (self.teacher_, self.student_, self.autoencoder_):
            m.eval()

    # --- fit ----------------------------------------------------------------------------------------
    def fit(self, images: ImageBatch) -> Self:
        x = as_image_tensor(images, "good images")
        self._check_input(x)
        cfg = self.config
        gen = self._start_training(x)
        self._build(tuple(x.shape[-2:]))  # all modules now, so their init does not depend on the teacher phase

        n_val = min(len(x) - 1, max(1, round(cfg.validation_share * len(x))))
        perm = torch.randperm(len(x), generator=gen)
        x_train, x_val = x[perm[n_val:].sort().values], x[perm[:n_val].sort().values]
        bs = cfg.batch_size

        # Teacher: distil the backbone's standardised features into the PDN.
        stats = ChannelStats()
        for batch in self._batches(x_train, "target statistics"):
            stats.add(self._raw_target(batch))
        self._target_mean, self._target_std = stats.result()
        channels = self._target_mean.numel()
        proj = _projection(channels, cfg.out_channels, cfg.seed)
        self._projection = None if proj is None else proj.to(self.device)

        def teacher_loss(step: int) -> torch.Tensor:
            batch = _nhwc(teacher_augment(x_train[sample_batch(len(x_train), bs, gen)].to(self.device), gen))
            return ((self.teacher_(batch).float() - self._target(batch)) ** 2).mean()

        opt = torch.optim.Adam(self.teacher_.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        self._train("teacher", teacher_loss, {"teacher": self.teacher_}, opt, cfg.teacher_steps, gen)

        # The paper's teacher normalisation: per-channel mean and std on the training images, frozen.
        self.teacher_.eval().requires_grad_(False)
        stats = ChannelStats()
        with torch.inference_mode():
            for batch in self._batches(x_train, "teacher statistics"):
                stats.add(self.teacher_(_nhwc(batch)).float())
        mean, std = stats.result()
        self.teacher_mean_, self.teacher_std_ = mean.to(self.device), std.to(self.device)

        # Student and autoencoder.
        c = cfg.out_channels

        def student_loss(step: int) -> torch.Tensor:
            batch = x_train[sample_batch(len(x_train), bs, gen)].to(self.device)
            aug = autoencoder_augment(batch, gen)
            both = _nhwc(torch.cat([batch, aug]))  # one pass of each network over plain and augmented images
            t, t_aug = self._teacher_features(both).chunk(2)
            s, s_aug = self.student_(both).float().chunk(2)
            ae = self.autoencoder_(_nhwc(aug)).float()
            hard = hard_mean((t - s[:, :c]) ** 2, cfg.hard_quantile)
            loss_ae = ((t_aug - ae) ** 2).mean()
            loss_stae = ((ae - s_aug[:, c:]) ** 2).mean()
            return hard + loss_ae + loss_stae

        params = [*self.student_.parameters(), *self.autoencoder_.parameters()]
        opt = torch.optim.Adam(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        drop_at = max(1, int(0.95 * cfg.steps))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 if step < drop_at else 0.1)
        modules = {"student": self.student_, "autoencoder": self.autoencoder_}
        self._train("student", student_loss, modules, opt, cfg.steps, gen, scheduler=sched)

        # Map normalisation from the held-out images.
        self._eval()
        st, aes = zip(*(self._raw_maps(b) for b in self._batches(x_val, "validation")), strict=True)
        st, aes = torch.cat(st), torch.cat(aes)
        # (q_a, q_b) of the student-teacher map, then of the autoencoder-student map
        self.map_quantiles_ = torch.stack([quantile(m, q) for m in (st, aes) for q in (_QUANTILE_A, _QUANTILE_B)])
        del self._target_mean, self._target_std, self._projection
        self.image_size_ = tuple(x.shape[-2:])
        return self

    # --- predict ------------------------------------------------------------------------------------
    def predict(self, images: ImageBatch) -> DetectorOutput:
        return self._predict_maps(images, self._map_fn)

    def _map_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """Run once the input is validated: eval mode, then the per-batch map."""
        self._eval()
        qa_st, qb_st, qa_ae, qb_ae = self.map_quantiles_.to(self.device).unbind()

        def anomaly_map(batch: torch.Tensor) -> torch.Tensor:
            st, aes = self._raw_maps(batch)
            st = 0.1 * (st - qa_st) / (qb_st - qa_st).clamp_min(1e-12)
            aes = 0.1 * (aes - qa_ae) / (qb_ae - qa_ae).clamp_min(1e-12)
            return to_image_maps(0.5 * st + 0.5 * aes, self.image_size_, self.config.blur_sigma)

        return anomaly_map

    # --- state --------------------------------------------------------------------------------------
    _MODULES = (("teacher.", "teacher_"), ("student.", "student_"), ("autoencoder.", "autoencoder_"))

    def _state(self) -> dict[str, torch.Tensor]:
        state = {
            "teacher_mean": self.teacher_mean_,
            "teacher_std": self.teacher_std_,
            "map_quantiles": self.map_quantiles_,
        }
        for prefix, attr in self._MODULES:
            state.update({prefix + k: v for k, v in getattr(self, attr).state_dict().items()})
        return state

    def _set_state(self, state: dict[str, torch.Tensor]) -> None:
        self._build(self.image_size_)
        for prefix, attr in self._MODULES:
            getattr(self, attr).load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
        self.teacher_.requires_grad_(False)
        self.teacher_mean_ = state["teacher_mean"].to(self.device)
        self.teacher_std_ = state["teacher_std"].to(self.device)
        self.map_quantiles_ = state["map_quantiles"]
        self._eval()


__all__ = ["Autoencoder", "EfficientAD", "EfficientADConfig", "hard_mean", "pdn", "pdn_grid", "quantile"]
