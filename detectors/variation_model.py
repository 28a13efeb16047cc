"""Variation model (Steger et al., *Machine Vision Algorithms and Applications*; a baseline of the MVTec
AD paper): the per-pixel mean and standard deviation of aligned good images; a pixel's anomaly is its
deviation from the mean in standard deviations.

No backbone and no training: the model is two images. Objects must be aligned first, or every
displacement becomes a defect: with ``align="translation"`` (default) each image is registered to the
model's mean by phase correlation (an integer shift; the MVTec paper uses shape-based matching, which
also finds rotation) and the deviation map is shifted back onto the input, so it lines up with its
masks. Textures need no alignment (``align="none"``). The spread is floored at ``min_std`` (in the
normalised input's units) so pixels that never vary in the good images (a flat background) do not turn
sensor noise into huge deviations, the role of the absolute tolerance in Steger's model. Map: the
largest deviation over the colour channels, blurred (sigma 4, as segad's other detectors); score = its
maximum.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

import numpy as np
import torch
import torch.nn.functional as F

from detectors.base import Detector, DetectorConfig, DetectorOutput, ImageBatch, as_image_tensor
from detectors.errors import InputError
from detectors.maps import gaussian_blur

ALIGN = ("none", "translation")


@dataclass(frozen=True)
class VariationModelConfig(DetectorConfig):
    align: str = "translation"
    min_std: float = 0.05
    blur_sigma: float = 4.0


def estimate_shift(reference: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """(N, 2) integer (dy, dx) with ``images[i]`` ~ ``reference`` shifted by it, by phase correlation of
    (H, W) grey levels; shifts beyond half the image wrap to negative ones."""
    h, w = reference.shape
    cross = torch.fft.fft2(images) * torch.fft.fft2(reference).conj()
    corr = torch.fft.ifft2(cross / cross.abs().clamp_min(1e-12)).real.flatten(1)
    peak = corr.argmax(1)
    dy, dx = peak // w, peak % w
    dy = torch.where(dy > h // 2, dy - h, dy)
    dx = torch.where(dx > w // 2, dx - w, dx)
    return torch.stack([dy, dx], 1)


def shift(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """(..., H, W) moved by (dy, dx) pixels; the uncovered border repeats the nearest row or column."""
    if dy == 0 and dx == 0:
        return images
    h, w = images.shape[-2:]
    flat = images.reshape(-1, 1, h, w)
    pad = (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0))
    moved = F.pad(flat, pad, mode="replicate")
    top, left = max(-dy, 0), max(-dx, 0)
    return moved[..., top : top + h, left : left + w].reshape(images.shape)


class VariationModel(Detector):
    name = "variation_model"
    config_class = VariationModelConfig
    config: VariationModelConfig

    def _check_options(self) -> None:
        if self.config.align not in ALIGN:
            raise InputError(f"variation_model: align must be one of {ALIGN}, got {self.config.align!r}")
        if self.config.min_std <= 0:
            raise InputError(f"variation_model: min_std must be positive, got {self.config.min_std}")

    def _aligned(self, x: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The images moved onto ``reference`` (grey, (H, W)) and the shifts that were undone."""
        if self.config.align == "none":
            return x, torch.zeros(len(x), 2, dtype=torch.long)
        shifts = estimate_shift(reference, x.mean(1))
        moved = torch.stack([shift(im, -int(dy), -int(dx)) for im, (dy, dx) in zip(x, shifts, strict=True)])
        return moved, shifts

    def fit(self, images: ImageBatch) -> Self:
        self._check_options()
        x = as_image_tensor(images, "good images").double()
        if len(x) < 2:
            raise InputError("variation_model needs at least two good images: a standard deviation needs two")
        aligned, _ = self._aligned(x, x[0].mean(0))
        aligned, _ = self._aligned(x, aligned.mean(0).mean(0))  # once more, onto the mean: no image is special
        self.mean_ = aligned.mean(0).float()
        self.std_ = aligned.std(0).float()
        self.image_size_ = tuple(x.shape[-2:])
        return self

    def predict(self, images: ImageBatch) -> DetectorOutput:
        self._check_options()
        x = as_image_tensor(images)
        self._check_fitted(x)
        spread = self.std_.clamp_min(self.config.min_std)
        reference = self.mean_.mean(0)
        maps = []
        for s in range(0, len(x), self.config.batch_size):
            batch = x[s : s + self.config.batch_size]
            aligned, shifts = self._aligned(batch, reference)
            dev = ((aligned - self.mean_).abs() / spread).amax(1)
            back = torch.stack([shift(d, int(dy), int(dx)) for d, (dy, dx) in zip(dev, shifts, strict=True)])
            maps.append(gaussian_blur(back, self.config.blur_sigma))
        m = torch.cat(maps)
        return DetectorOutput(m.numpy().astype(np.float32), m.flatten(1).max(1).values.numpy().astype(np.float32))

    def _state(self) -> dict[str, torch.Tensor]:
        return {"mean_": self.mean_, "std_": self.std_}

    def _set_state(self, state: dict[str, torch.Tensor]) -> None:
        self.mean_, self.std_ = state["mean_"], state["std_"]
