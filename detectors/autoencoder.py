"""Convolutional autoencoders (Bergmann, Löwe, Fauser, Sattlegger & Steger, VISAPP 2019; MVTec AD
baselines): trained to rebuild good images through a 100-d bottleneck, they rebuild a defect as good,
so the residual marks it. ``ae_l2`` trains and scores with the per-pixel squared error, ``ae_ssim``
with structural similarity (1 - the per-pixel SSIM over 11 x 11 windows), which the paper found to
localise defects that differ in structure rather than intensity.

Architecture as the paper's table: a 128 x 128 input, convolutions of 4 x 4 (stride 2) and 3 x 3
(stride 1) with 32 / 32 / 32 / 64 / 64 / 128 / 64 / 32 channels and LeakyReLU(0.2), an 8 x 8
convolution to the 100-d latent, and the mirror image with transposed convolutions; a sigmoid output
in [0, 1]. Adam 2e-4 (weight decay 1e-5), batch 128, 15,600 steps (the paper's 200 epochs of 10,000
patches). Deviations: images are resized to 128 x 128 whole (the paper crops 128-px patches from
textures at 256 px and augments them), kept in RGB, and the map is upsampled back to the input and
blurred (sigma 4, as segad's other detectors; the paper thresholds the raw residual); score = max.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Self

import torch
import torch.nn.functional as F
from torch import nn

from detectors.backbones import to_unit_square
from detectors.base import DetectorOutput, ImageBatch, as_image_tensor
from detectors.errors import InputError
from detectors.maps import gaussian_blur, ssim_map
from detectors.training import TrainableConfig, TrainableDetector, load_modules, modules_state, sample_batch

SIZE = 128  # the paper's input side; the 8 x 8 latent convolution needs exactly this


@dataclass(frozen=True)
class AutoencoderConfig(TrainableConfig):
    latent_dim: int = 100
    width: int = 32  # the first layers' channels; the paper's 32 (then 64, 128)
    steps: int = 15_600
    batch_size: int = 128
    learning_rate: float = 2e-4
    weight_decay: float = 1e-5
    blur_sigma: float = 4.0


def _down(cin: int, cout: int, k: int, s: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, s, padding=1 if k in (3, 4) else 0), nn.LeakyReLU(0.2)]


def _up(cin: int, cout: int, k: int, s: int) -> list[nn.Module]:
    return [nn.ConvTranspose2d(cin, cout, k, s, padding=1 if k in (3, 4) else 0), nn.LeakyReLU(0.2)]


class ConvAutoencoder(nn.Module):
    """The paper's encoder (128 -> 8 x 8 -> 1 x 1 latent) and its mirror."""

    def __init__(self, width: int, latent: int) -> None:
        super().__init__()
        w = width
        plan = [(3, w, 4, 2), (w, w, 4, 2), (w, w, 3, 1), (w, 2 * w, 4, 2), (2 * w, 2 * w, 3, 1)]
        plan += [(2 * w, 4 * w, 4, 2), (4 * w, 2 * w, 3, 1), (2 * w, w, 3, 1)]
        self.encoder = nn.Sequential(*[m for args in plan for m in _down(*args)], nn.Conv2d(w, latent, 8))
        mirror = [(cout, cin, k, s) for cin, cout, k, s in reversed(plan)]
        layers = [nn.ConvTranspose2d(latent, w, 8), nn.LeakyReLU(0.2)]
        layers += [m for args in mirror[:-1] for m in _up(*args)]
        layers += [nn.ConvTranspose2d(w, 3, 4, 2, padding=1), nn.Sigmoid()]
        self.decoder = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class _Autoencoder(TrainableDetector):
    config_class = AutoencoderConfig
    config: AutoencoderConfig

    def _residual(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(B, H, W) per-pixel residual of input x and rebuild y, both in [0, 1]."""
        raise NotImplementedError

    def fit(self, images: ImageBatch) -> Self:
        x = as_image_tensor(images, "good images")
        if len(x) < 2:
            raise InputError(f"{self.name} needs at least two good images to train")
        if self.config.latent_dim < 1 or self.config.width < 1:
            raise InputError(f"{self.name}: latent_dim and width must be at least 1")
        gen = self._start_training(x)
        data = to_unit_square(x, SIZE)
        torch.manual_seed(self.config.seed)
        self.net_ = ConvAutoencoder(self.config.width, self.config.latent_dim).to(self.device)
        opt = torch.optim.Adam(
            self.net_.parameters(), lr=self.config.learning_rate, weight_decay=self.config.weight_decay
        )

        def loss(step: int) -> torch.Tensor:
            batch = data[sample_batch(len(data), self.config.batch_size, gen)].to(self.device)
            return self._residual(batch, self.net_(batch)).mean()

        self._train("train", loss, {"net": self.net_}, opt, self.config.steps, gen)
        self.image_size_ = tuple(x.shape[-2:])
        return self

    def predict(self, images: ImageBatch) -> DetectorOutput:
        return self._predict_maps(images, self._map_fn)

    def _map_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        self.net_.eval()

        def anomaly_map(batch: torch.Tensor) -> torch.Tensor:
            x = to_unit_square(batch, SIZE)
            res = self._residual(x, self.net_(x))
            up = F.interpolate(res[:, None], size=self.image_size_, mode="bilinear", align_corners=False)[:, 0]
            return gaussian_blur(up, self.config.blur_sigma)

        return anomaly_map

    def _state(self) -> dict[str, torch.Tensor]:
        return modules_state({"net": self.net_})

    def _set_state(self, state: dict[str, torch.Tensor]) -> None:
        self.net_ = ConvAutoencoder(self.config.width, self.config.latent_dim).to(self.device)
        load_modules({"net": self.net_}, state)


class AutoencoderL2(_Autoencoder):
    name = "ae_l2"

    def _residual(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (x - y.float()).pow(2).sum(1)


class AutoencoderSSIM(_Autoencoder):
    name = "ae_ssim"

    def _residual(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 1.0 - ssim_map(x, y.float()).mean(1)


__all__ = ["AutoencoderL2", "AutoencoderSSIM", "ConvAutoencoder"]
