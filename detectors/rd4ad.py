"""Reverse distillation (Deng & Li, CVPR 2022): a trainable decoder learns to rebuild the frozen
encoder's multi-scale features of good images from a compact one-class bottleneck; where it fails
(1 - cosine similarity, per level, summed) the image is anomalous.

The torch core is two small modules trained by ``detectors.training``'s plain loop (seeded, Adam
as in the paper, bfloat16 on GPU, checkpoints); one epoch = ceil(n / batch_size) random batches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Self

import torch
import torch.nn.functional as F
from torch import nn

from detectors.base import DetectorOutput, ImageBatch, as_image_tensor
from detectors.errors import InputError
from detectors.maps import gaussian_blur, parse_layers
from detectors.training import TrainableConfig, TrainableDetector, load_modules, modules_state, sample_batch


@dataclass(frozen=True)
class RD4ADConfig(TrainableConfig):
    layers: str = "layer1+layer2+layer3"
    bottleneck_channels: int = 256
    epochs: int = 20
    learning_rate: float = 0.005
    blur_sigma: float = 4.0


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _up(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose2d(cin, cout, 2, 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True), _conv(cout, cout)
    )


class Bottleneck(nn.Module):
    """One-class embedding: every level brought to the coarsest stride, fused, squeezed one stride more."""

    def __init__(self, channels: list[int], out_channels: int) -> None:
        super().__init__()
        n = len(channels)
        self.align = nn.ModuleList(
            nn.Sequential(*[_conv(c, c, 2) for _ in range(n - 1 - k)]) if k < n - 1 else nn.Identity()
            for k, c in enumerate(channels)
        )
        self.fuse = nn.Sequential(_conv(sum(channels), out_channels, 2), _conv(out_channels, out_channels))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.fuse(torch.cat([a(f) for a, f in zip(self.align, feats, strict=True)], dim=1))


class Decoder(nn.Module):
    """Bottleneck -> the encoder's levels, coarsest first, each a 2x upsampling."""

    def __init__(self, channels: list[int], in_channels: int) -> None:
        super().__init__()
        outs = channels[::-1]
        ins = [in_channels, *outs[:-1]]
        self.ups = nn.ModuleList(_up(i, o) for i, o in zip(ins, outs, strict=True))
        self.heads = nn.ModuleList(nn.Conv2d(o, o, 1) for o in outs)

    def forward(self, z: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for up, head in zip(self.ups, self.heads, strict=True):
            z = up(z)
            out.append(head(z))
        return out[::-1]  # finest first, like the encoder's list


def _distance(enc: list[torch.Tensor], dec: list[torch.Tensor]) -> list[torch.Tensor]:
    """(B, h_l, w_l) maps of 1 - cosine similarity per level."""
    return [1.0 - F.cosine_similarity(e.float(), d.float(), dim=1) for e, d in zip(enc, dec, strict=True)]


class RD4AD(TrainableDetector):
    name = "rd4ad"
    version = 2  # step-based training loop with random batches
    config_class = RD4ADConfig
    config: RD4ADConfig

    def _encode(self, batch: torch.Tensor) -> list[torch.Tensor]:
        names = parse_layers(self.config.layers)
        with torch.inference_mode():
            feats = self.backbone(batch, names)
        return [feats[n].clone() for n in names]  # out of inference mode, so autograd can use them

    def _build(self) -> None:
        channels = [self.backbone.channels[n] for n in parse_layers(self.config.layers)]
        torch.manual_seed(self.config.seed)
        self.bottleneck_ = Bottleneck(channels, self.config.bottleneck_channels).to(self.device)
        self.decoder_ = Decoder(channels, self.config.bottleneck_channels).to(self.device)

    def fit(self, images: ImageBatch) -> Self:
        x = as_image_tensor(images, "good images")
        if min(x.shape[-2:]) < 64:
            raise InputError(
                f"rd4ad needs images of at least 64x64 (its bottleneck is at stride 32); got {x.shape[-2:]}"
            )
        if len(x) < 2:
            raise InputError("rd4ad needs at least two good images to train (batch norm needs two per batch)")
        gen = self._start_training(x)
        self._build()
        params = [*self.bottleneck_.parameters(), *self.decoder_.parameters()]
        opt = torch.optim.Adam(params, lr=self.config.learning_rate, betas=(0.5, 0.999))
        steps_per_epoch = -(-len(x) // self.config.batch_size)
        feats = self._frozen_features(x, self.config.layers)

        def loss(step: int) -> torch.Tensor:
            idx = sample_batch(len(x), self.config.batch_size, gen)
            enc = [f[idx].to(self.device, non_blocking=True) for f in feats]
            dec = self.decoder_(self.bottleneck_(enc))
            return sum(d.mean() for d in _distance(enc, dec))

        self._train("train", loss, self._modules(), opt, self.config.epochs * steps_per_epoch, gen)
        self.image_size_ = tuple(x.shape[-2:])
        return self

    def predict(self, images: ImageBatch) -> DetectorOutput:
        return self._predict_maps(images, self._map_fn)

    def _map_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """Run once the input is validated: eval mode, then the per-batch map."""
        self.bottleneck_.eval()
        self.decoder_.eval()

        def anomaly_map(batch: torch.Tensor) -> torch.Tensor:
            enc = self._encode(batch)
            dist = _distance(enc, self.decoder_(self.bottleneck_(enc)))
            m = sum(
                F.interpolate(d[:, None], size=self.image_size_, mode="bilinear", align_corners=False)[:, 0]
                for d in dist
            )
            return gaussian_blur(m, self.config.blur_sigma)

        return anomaly_map

    def _modules(self) -> dict[str, nn.Module]:
        return {"bottleneck": self.bottleneck_, "decoder": self.decoder_}

    def _state(self) -> dict[str, torch.Tensor]:
        return modules_state(self._modules())

    def _set_state(self, state: dict[str, torch.Tensor]) -> None:
        self._build()
        load_modules(self._modules(), state)
