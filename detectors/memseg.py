"""MemSeg (Yang et al., 2022, arXiv 2205.00908): segment synthetic anomalies with a memory of normal images.

A frozen pretrained encoder sees good images with generated anomalies. A *memory* holds its features
of a few good images; each input is matched to the memory image with the smallest feature distance
(mean squared difference, summed over the levels), and at each level its features are concatenated
with the squared difference to that memory image ("differences and commonalities"). A multi-scale
feature fusion module (per level: 3x3 conv times coordinate attention, two 3x3 convs; then fused
top-down) and a spatial attention (the mean squared difference per level, multiplied down the
levels) feed a U-Net decoder, which also reads the encoder's deepest level and a stride-2 skip, and
segments the anomaly (2 classes at full resolution). Loss: 0.6 L1 + 0.4 focal (gamma 4) on the mask.
The map is the predicted anomaly probability; the image score the mean of its top 100 pixels.

Defaults, from TooTouch/MemSeg (``configs.yaml``, ``main.py``, ``train.py``, ``models/``) unless said; the
authors' repository (``areylng/MemSeg``) ships inference code only, so the training recipe is TooTouch's:

* memory of ``memory_size=10`` good images drawn at random (seeded): the paper's N (``configs.yaml``
  and the authors' inference code keep 30, 10 for toothbrush, 120 for screw; set 30 for theirs);
* ``steps=5000`` at ``batch_size=8``; AdamW (lr 3e-3, weight decay 5e-4) with a linear warm-up
  from 1e-4 over the first 10 % of the steps, then a cosine to 1e-4 (the repo's
  ``CosineAnnealingWarmupRestarts``, one cycle, written as a LambdaLR so checkpoints replay it);
* half the training images get an anomaly (the repo alternates); L1 weight 0.6, focal weight 0.4,
  focal gamma 4, no alpha;
* decoder widths 256 / 128 / 64 / 48 / 48 (``models/decoder.py``: ``decoder_width=64`` is 4w, 2w, w,
  3w/4, 3w/4); the fusion module's widths follow the encoder's channels, as in ``models/msff.py``;
* score: mean of the 100 highest pixel probabilities (``train.py``; the authors' code too);
  ``top_k`` changes it; no blur (``blur_sigma=0``).

Deviations, and why:

* Encoder: frozen EfficientNet-Lite0 ``layer1..layer3`` (strides 4 / 8 / 16) for the memory, and
  ``layer4`` (stride 32) as the decoder's input. The paper fine-tunes ResNet18's last stage; only
  Lite0 is shipped here and every segad backbone is frozen (``backbone=resnet18`` uses ResNet18's
  levels, still frozen). With a frozen encoder the memory and each input's features are computed
  without gradients.
* The decoder's stride-2 skip: ResNet18's stem output through a 3x3 conv in the repo; segad's
  backbones expose no stride-2 level, so a trainable stride-2 3x3 conv reads the image instead.
* Anomalies: DRAEM's recipe from ``detectors.synthesis`` (as ``draem``: Perlin mask, another good
  training image as the texture, opacity beta = U(0, 1) * 0.8). The paper adds a foreground mask,
  DTD textures and shuffled-grid "structure" anomalies with opacity U(0.15, 1); there is no DTD here,
  and one shared generator keeps MemSeg's training anomalies the ones the other detectors see.
* Focal loss on log-softmax (``detectors.draem.focal_loss``) rather than on log(p + 1e-5) with 1e-5
  label smoothing: the same loss up to those 1e-5 terms, computed stably from the logits.
* Sides must be divisible by 32 (the encoder's deepest level is upsampled 5 times to full size).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Self

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from detectors.backbones import from_unit, to_unit
from detectors.base import DetectorOutput, ImageBatch, as_image_tensor
from detectors.draem import focal_loss, synthesise
from detectors.errors import InputError
from detectors.maps import gaussian_blur
from detectors.training import TrainableConfig, TrainableDetector, load_modules, modules_state, sample_batch

_LEVELS = ("layer1", "layer2", "layer3")  # the memory's levels (ResNet18's layer1-3 in the paper)
_DEEP = "layer4"  # the decoder's input
_DOWNSAMPLING = 32


@dataclass(frozen=True)
class MemSegConfig(TrainableConfig):
    batch_size: int = 8
    steps: int = 5000
    learning_rate: float = 3e-3
    min_learning_rate: float = 1e-4
    warmup_ratio: float = 0.1
    weight_decay: float = 5e-4
    memory_size: int = 10  # good training images in the memory (all of them when there are fewer)
    anomaly_probability: float = 0.5
    l1_weight: float = 0.6
    focal_weight: float = 0.4
    focal_gamma: float = 4.0
    decoder_width: int = 64  # decoder widths 4w, 2w, w, 3w/4, 3w/4
    top_k: int = 100  # image score: mean of the top_k pixel probabilities
    blur_sigma: float = 0.0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise InputError(f"memseg: steps must be at least 1, got {self.steps}")
        if self.memory_size < 1:
            raise InputError(f"memseg: memory_size must be at least 1, got {self.memory_size}")
        if self.decoder_width < 4:
            raise InputError(f"memseg: decoder_width must be at least 4, got {self.decoder_width}")
        if self.top_k < 1:
            raise InputError(f"memseg: top_k must be at least 1, got {self.top_k}")
        if not 0.0 <= self.anomaly_probability <= 1.0:
            raise InputError(f"memseg: anomaly_probability must be in [0, 1], got {self.anomaly_probability}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise InputError(f"memseg: warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if not 0.0 < self.min_learning_rate <= self.learning_rate:
            raise InputError(
                f"memseg: need 0 < min_learning_rate <= learning_rate, got {self.min_learning_rate}, "
                f"{self.learning_rate}"
            )
        if self.focal_gamma < 0:
            raise InputError(f"memseg: focal_gamma must be >= 0, got {self.focal_gamma}")


# --- networks ---------------------------------------------------------------------------------
def _resize(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=True)


class CoordAttention(nn.Module):
    """Coordinate attention (Hou et al., CVPR 2021), reduction 32: x times a per-row and a per-column gate."""

    def __init__(self, channels: int, reduction: int = 32) -> None:
        super().__init__()
        mid = max(8, channels // reduction)
        self.squeeze = nn.Sequential(nn.Conv2d(channels, mid, 1), nn.BatchNorm2d(mid), nn.Hardswish())
        self.rows = nn.Conv2d(mid, channels, 1)
        self.cols = nn.Conv2d(mid, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        pooled = torch.cat([x.mean(3, keepdim=True), x.mean(2, keepdim=True).transpose(2, 3)], dim=2)
        ph, pw = self.squeeze(pooled).split([h, w], dim=2)
        return x * self.rows(ph).sigmoid() * self.cols(pw.transpose(2, 3)).sigmoid()


class _FusionBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cin, 3, padding=1)
        self.attention = CoordAttention(cin)
        self.out = nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.Conv2d(cout, cout, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.conv(x) * self.attention(x))


class MultiScaleFusion(nn.Module):
    """MSFF: fuse each level's (features, squared difference) top-down, gated by the difference maps."""

    def __init__(self, channels: list[int]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(_FusionBlock(2 * c, c) for c in channels)
        self.ups = nn.ModuleList(
            nn.Conv2d(channels[k + 1], channels[k], 3, padding=1) for k in range(len(channels) - 1)
        )

    def forward(self, feats: list[torch.Tensor], diffs: list[torch.Tensor]) -> list[torch.Tensor]:
        out = [block(torch.cat([f, d], dim=1)) for block, f, d in zip(self.blocks, feats, diffs, strict=True)]
        for k in reversed(range(len(out) - 1)):
            out[k] = out[k] + self.ups[k](_resize(out[k + 1], out[k]))
        # Spatial attention: the mean squared difference, times the coarser level's attention.
        gate: torch.Tensor | None = None
        for k in reversed(range(len(out))):
            m = diffs[k].mean(dim=1, keepdim=True)
            gate = m if gate is None else m * _resize(gate, m)
            out[k] = out[k] * gate
        return out


def _upconv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class MemSegDecoder(nn.Module):
    """U-Net decoder: deepest level (stride 32) up to full size, fused levels and a stride-2 skip on the way."""

    def __init__(self, deep_channels: int, channels: list[int], width: int) -> None:
        super().__init__()
        w = [4 * width, 2 * width, width, 3 * width // 4, 3 * width // 4]
        c1, c2, c3 = channels
        self.up3 = _upconv(deep_channels, w[0])
        self.up2 = _upconv(w[0] + c3, w[1])
        self.up1 = _upconv(w[1] + c2, w[2])
        self.up0 = _upconv(w[2] + c1, w[3])
        self.skip = nn.Conv2d(3, w[3], 3, stride=2, padding=1)  # the stride-2 skip, read from the image
        self.up_mask = _upconv(2 * w[3], w[4])
        self.head = nn.Conv2d(w[4], 2, 3, padding=1)

    def forward(self, image: torch.Tensor, deep: torch.Tensor, fused: list[torch.Tensor]) -> torch.Tensor:
        f1, f2, f3 = fused
        z = torch.cat([self.up3(deep), f3], dim=1)
        z = torch.cat([self.up2(z), f2], dim=1)
        z = torch.cat([self.up1(z), f1], dim=1)
        z = torch.cat([self.up0(z), self.skip(image)], dim=1)
        return self.head(self.up_mask(z))


def nearest_differences(feats: list[torch.Tensor], memory: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per input, the memory image with the smallest summed mean squared feature difference; returns the
    squared differences to it, level by level."""
    dist = sum(((f[:, None] - m[None]) ** 2).mean(dim=(2, 3, 4)) for f, m in zip(feats, memory, strict=True))
    idx = dist.argmin(dim=1)
    return [(m[idx] - f) ** 2 for f, m in zip(feats, memory, strict=True)]


def warmup_cosine(steps: int, warmup_ratio: float, lr: float, min_lr: float) -> Callable[[int], float]:
    """The repo's one-cycle CosineAnnealingWarmupRestarts as a LambdaLR factor of ``lr``."""
    warmup = int(steps * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (min_lr + (lr - min_lr) * step / warmup) / lr
        t = (step - warmup) / max(1, steps - warmup)
        return (min_lr + (lr - min_lr) * (1 + math.cos(math.pi * t)) / 2) / lr

    return factor


# --- the detector -----------------------------------------------------------------------------
class MemSeg(TrainableDetector):
    name = "memseg"
    config_class = MemSegConfig
    config: MemSegConfig

    def _build(self) -> None:
        channels = [self.backbone.channels[n] for n in _LEVELS]
        torch.manual_seed(self.config.seed)
        self.fusion_ = MultiScaleFusion(channels).to(self.device)
        self.decoder_ = MemSegDecoder(self.backbone.channels[_DEEP], channels, self.config.decoder_width).to(
            self.device
        )

    def _check_input(self, x: torch.Tensor) -> None:
        h, w = x.shape[-2:]
        if h % _DOWNSAMPLING or w % _DOWNSAMPLING:
            raise InputError(
                f"memseg needs image sides divisible by {_DOWNSAMPLING} (its decoder upsamples the stride-32 "
                f"level to full size); got {h}x{w}: resize the images, e.g. to 256x256"
            )

    def _features(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():  # frozen encoder; no_grad (not inference_mode) so training can use them
            return self.backbone(batch, (*_LEVELS, _DEEP))

    def _logits(self, batch: torch.Tensor) -> torch.Tensor:
        feats = self._features(batch)
        levels = [feats[n] for n in _LEVELS]
        with torch.no_grad():
            diffs = nearest_differences(levels, self.memory_)
        return self.decoder_(batch, feats[_DEEP], self.fusion_(levels, diffs))

    def fit(self, images: ImageBatch) -> Self:
        x = as_image_tensor(images, "good images")
        self._check_input(x)
        if len(x) < 2:
            raise InputError(
                "memseg needs at least two good images to train: another good image is the anomaly texture "
                "and batch norm needs two images per batch"
            )
        cfg = self.config
        if cfg.batch_size < 2:
            raise InputError(f"memseg needs batch_size >= 2 for batch norm, got {cfg.batch_size}")
        gen = self._start_training(x)
        memory_idx = torch.randperm(len(x), generator=gen)[: min(cfg.memory_size, len(x))]
        parts: list[list[torch.Tensor]] = [[] for _ in _LEVELS]
        for batch in self._batches(x[memory_idx], "memory"):
            feats = self._features(batch)
            for k, n in enumerate(_LEVELS):
                parts[k].append(feats[n].float())
        self.memory_ = [torch.cat(p) for p in parts]
        self._build()
        pool = to_unit(x).permute(0, 2, 3, 1).contiguous().numpy()  # (N, H, W, 3) in [0, 1]
        params = [*self.fusion_.parameters(), *self.decoder_.parameters()]
        opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, warmup_cosine(cfg.steps, cfg.warmup_ratio, cfg.learning_rate, cfg.min_learning_rate)
        )

        def loss(step: int) -> torch.Tensor:
            idx = sample_batch(len(pool), cfg.batch_size, gen).numpy()
            rng = np.random.default_rng(int(torch.randint(2**31, (1,), generator=gen)))
            inputs, masks = synthesise(pool[idx], idx, pool, cfg.anomaly_probability, rng)
            batch = from_unit(torch.from_numpy(inputs).permute(0, 3, 1, 2)).to(self.device)
            target = torch.from_numpy(masks).to(self.device)
            logits = self._logits(batch).float()
            l1 = (torch.softmax(logits, dim=1)[:, 1] - target.float()).abs().mean()
            return cfg.l1_weight * l1 + cfg.focal_weight * focal_loss(logits, target, cfg.focal_gamma)

        self._train("train", loss, self._modules(), opt, cfg.steps, gen, scheduler=sched)
        self.image_size_ = tuple(x.shape[-2:])
        return self

    def predict(self, images: ImageBatch) -> DetectorOutput:
        return self._predict_maps(images, self._map_fn)

    def _map_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        for m in self._modules().values():
            m.eval()

        def anomaly_map(batch: torch.Tensor) -> torch.Tensor:
            m = torch.softmax(self._logits(batch).float(), dim=1)[:, 1]
            return gaussian_blur(m, self.config.blur_sigma)

        return anomaly_map

    def _image_scores(self, maps: torch.Tensor) -> torch.Tensor:
        """The repo's score: the mean of the ``top_k`` highest pixels of the map."""
        flat = maps.flatten(1)
        return flat.topk(min(self.config.top_k, flat.shape[1]), dim=1).values.mean(dim=1)

    def _modules(self) -> dict[str, nn.Module]:
        return {"fusion": self.fusion_, "decoder": self.decoder_}

    def _state(self) -> dict[str, torch.Tensor]:
        memory = {f"memory.{n}": m for n, m in zip(_LEVELS, self.memory_, strict=True)}
        return {**modules_state(self._modules()), **memory}

    def _set_state(self, state: dict[str, torch.Tensor]) -> None:
        self.memory_ = [state.pop(f"memory.{n}").to(self.device) for n in _LEVELS]
        self._build()
        load_modules(self._modules(), state)


__all__ = ["CoordAttention", "MemSeg", "MemSegConfig", "MemSegDecoder", "MultiScaleFusion", "nearest_differences"]
