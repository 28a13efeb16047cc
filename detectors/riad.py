"""RIAD, reconstruction by inpainting (Zavrtanik, Kristan & Skočaj, Pattern Recognition 112, 2021).

A U-Net learns to *inpaint* good images: the image is cut into square cells of ``k`` x ``k`` px, the
cells are split at random into ``n = 3`` disjoint masks, the net inpaints the image once per mask
(the masked cells set to zero), and the reconstruction is, on each mask's cells, the output of the
pass that could not see them. A defect is never visible when its own cells are inpainted, so it is
rebuilt as good. Training draws ``k`` from {2, 4, 8, 16} for each batch; the loss is the paper's
L2 + multi-scale gradient-magnitude similarity (MSGMS) + SSIM, each weighted 1. At test time each
``k`` gives a reconstruction, its anomaly map is 1 - the MSGMS map of input and reconstruction,
mean-filtered (21 x 21); the maps of all ``k`` are averaged. Image score = max of the map.

Details, from the paper and, where the paper leaves them open, the public re-implementations
(plutoyuxie/Reconstruction-by-inpainting-for-visual-anomaly-detection, taikiinoue45/RIAD, both of
which set ``k`` as the *cell side in pixels*, 2/4/8/16 px at 256 px, and 3 masks; that is what this
uses): 256 px inputs; GMS with 3 x 3 Prewitt filters and c = 0.0026 (for [0, 1] images) over 4
scales (full, 1/2, 1/4, 1/8 by 2 x 2 average pooling), each scale's map upsampled bilinearly and
averaged; SSIM over 11 x 11 Gaussian windows (sigma 1.5); a U-Net with 64-128-256-512-512 channels
(a stride-1 block, then four 4 x 4 stride-2 convolutions), transposed-convolution upsampling with
skip concatenation, BN + ReLU, a tanh output; inputs scaled to [-1, 1] so a masked cell (zero) is
mid-grey rather than black; Adam lr 1e-4 (weight decay 1e-5, as both re-implementations), batch 8,
300 epochs.

Deviations: the three inpainting passes of a batch run as one forward pass of 3 x batch images
(batch norm sees all three; the re-implementations run three passes); GMS is computed per RGB
channel and averaged (one re-implementation converts to grey first, which misses a change of hue
alone); the test masks are drawn once per fit from the seed, not per batch, so an image's map does
not depend on its batch; no early stopping on a validation split and no lr drop (the paper states
neither; a re-implementation stops early on 20 % of the good images, which segad keeps for
calibration); the map is upsampled to the input size and blurred (sigma 4, as segad's other
detectors; the paper uses the mean filter only).
"""

from __future__ import annotations

import math
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

_DOWNSAMPLING = 16  # four stride-2 convolutions in the U-Net
GMS_C = 0.0026  # the GMSD paper's constant (170 / 255**2), for images in [0, 1]


@dataclass(frozen=True)
class RIADConfig(TrainableConfig):
    image_size: int = 256  # the working resolution (square); a multiple of 16 and of every cell size
    cell_sizes: str = "2+4+8+16"  # the side k of the square cells in px at image_size, joined by '+'
    n_masks: int = 3  # disjoint masks the cells are split into
    width: int = 64  # U-Net channels: width * (1, 2, 4, 8, 8)
    epochs: int = 300
    batch_size: int = 8
    learning_rate: float = 1e-4
    weight_decay: float = 1e-5
    msgms_scales: int = 4
    mean_filter: int = 21  # side of the mean filter over each k's dissimilarity map, in working px
    blur_sigma: float = 4.0  # Gaussian blur of the map at the input size

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise InputError(f"riad: epochs must be at least 1, got {self.epochs}")
        if self.width < 1:
            raise InputError(f"riad: width must be at least 1, got {self.width}")
        if self.n_masks < 2:
            raise InputError(
                f"riad: n_masks must be at least 2 (one mask would hide the whole image), got {self.n_masks}"
            )
        if self.msgms_scales < 1:
            raise InputError(f"riad: msgms_scales must be at least 1, got {self.msgms_scales}")
        if self.mean_filter < 1 or self.mean_filter % 2 == 0:
            raise InputError(f"riad: mean_filter must be a positive odd number, got {self.mean_filter}")
        if self.learning_rate < 0 or self.weight_decay < 0:
            raise InputError("riad: learning_rate and weight_decay must not be negative")
        parse_cells(self.cell_sizes)

    @property
    def cells(self) -> list[int]:
        return parse_cells(self.cell_sizes)


def parse_cells(text: str) -> list[int]:
    """``"2+4+8+16"`` -> [2, 4, 8, 16]; an InputError naming the option for anything else."""
    try:
        cells = [int(p) for p in text.replace(",", "+").split("+") if p.strip()]
    except ValueError:
        cells = []
    if not cells or any(c < 1 for c in cells):
        raise InputError(f"riad: cell_sizes={text!r}: give positive cell sides in px joined by '+', e.g. '2+4+8+16'")
    return cells


# --- masks ------------------------------------------------------------------------------------
def grid_masks(size: int, cell: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """(n, size, size) bool masks, True = hidden: the ``cell``-px grid's cells split at random into ``n``
    disjoint sets of (nearly) equal size, so every pixel is hidden by exactly one mask."""
    g = size // cell
    order = torch.randperm(g * g, generator=generator)
    owner = torch.empty(g * g, dtype=torch.long)
    owner[order] = torch.arange(g * g) % n
    owner = owner.view(g, g).repeat_interleave(cell, 0).repeat_interleave(cell, 1)
    return owner[None] == torch.arange(n).view(n, 1, 1)


def inpaint(net: nn.Module, x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Reconstruct (B, 3, S, S) images ``x`` in [-1, 1] from ``masks`` (n, S, S): each mask's cells are
    hidden (zero) in one pass, and the reconstruction takes each cell from the pass that hid it."""
    n, b = len(masks), len(x)
    hidden = masks[:, None, None].to(x.dtype)  # (n, 1, 1, S, S)
    inputs = (x[None] * (1 - hidden)).flatten(0, 1)  # (n * B, 3, S, S), one batch
    out = net(inputs).view(n, b, *x.shape[1:])
    return (out * hidden).sum(0)


# --- similarity -------------------------------------------------------------------------------
def _prewitt(x: torch.Tensor) -> torch.Tensor:
    """Per-channel gradient magnitude of (B, C, H, W) with 3 x 3 Prewitt filters, replicate padding."""
    kx = x.new_tensor([[1.0, 0.0, -1.0]] * 3) / 3.0
    k = torch.stack([kx, kx.T])[:, None].repeat(x.shape[1], 1, 1, 1)  # (2C, 1, 3, 3)
    g = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k, groups=x.shape[1])
    return (g[:, 0::2] ** 2 + g[:, 1::2] ** 2 + 1e-12).sqrt()


def msgms_map(a: torch.Tensor, b: torch.Tensor, scales: int = 4) -> torch.Tensor:
    """(B, H, W) multi-scale gradient-magnitude similarity of (B, C, H, W) images in [0, 1]: 1 where the
    gradients agree, lower where they differ; GMS per channel and scale, averaged, always float32."""
    with torch.autocast(a.device.type, enabled=False):
        a, b = a.float(), b.float()
        size = a.shape[-2:]
        total = a.new_zeros(a.shape[0], 1, *size)
        for s in range(scales):
            if s:
                a, b = F.avg_pool2d(a, 2), F.avg_pool2d(b, 2)
            ga, gb = _prewitt(a), _prewitt(b)
            gms = ((2 * ga * gb + GMS_C) / (ga**2 + gb**2 + GMS_C)).mean(1, keepdim=True)
            total = total + (gms if s == 0 else F.interpolate(gms, size=size, mode="bilinear", align_corners=False))
        return total[:, 0] / scales


def riad_loss(x: torch.Tensor, rec: torch.Tensor, scales: int) -> torch.Tensor:
    """The paper's loss of a reconstruction of images in [0, 1]: L2 + MSGMS + SSIM, each weighted 1."""
    with torch.autocast(x.device.type, enabled=False):
        x, rec = x.float(), rec.float()
        l2 = F.mse_loss(rec, x)
        gms = (1 - msgms_map(x, rec, scales)).mean()
        ssim = (1 - ssim_map(x, rec)).mean()
        return l2 + gms + ssim


# --- network ----------------------------------------------------------------------------------
def _block(cin: int, cout: int, k: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, padding=1),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class InpaintingUNet(nn.Module):
    """RIAD's U-Net: width * (1, 2, 4, 8, 8) channels at strides 1 to 16, skips concatenated, tanh out."""

    def __init__(self, width: int) -> None:
        super().__init__()
        ws = [width, 2 * width, 4 * width, 8 * width, 8 * width]
        self.down = nn.ModuleList([_block(3, ws[0], 3, 1)] + [_block(ws[i - 1], ws[i], 4, 2) for i in range(1, 5)])
        self.up = nn.ModuleList(nn.ConvTranspose2d(ws[i + 1], ws[i], 4, 2, padding=1) for i in reversed(range(4)))
        self.merge = nn.ModuleList(_block(2 * ws[i], ws[i], 3, 1) for i in reversed(range(4)))
        self.out = nn.Conv2d(ws[0], 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
        z = skips.pop()
        for up, merge in zip(self.up, self.merge, strict=True):
            z = merge(torch.cat([up(z), skips.pop()], dim=1))
        return torch.tanh(self.out(z))


# --- the detector -----------------------------------------------------------------------------
class RIAD(TrainableDetector):
    name = "riad"
    config_class = RIADConfig
    config: RIADConfig

    def _working(self, x: torch.Tensor) -> torch.Tensor:
        """Detector input -> [0, 1] pixels at the working resolution."""
        return to_unit_square(x, self.config.image_size)

    def _check_config(self) -> None:
        s, cells = self.config.image_size, self.config.cells
        if s < _DOWNSAMPLING or s % _DOWNSAMPLING:
            raise InputError(
                f"riad: image_size must be a multiple of {_DOWNSAMPLING} (the U-Net downsamples 4 times), got {s}"
            )
        bad = [c for c in cells if s % c or c >= s]
        if bad:
            raise InputError(
                f"riad: cell_sizes {bad} do not tile image_size={s} into at least 2 x 2 cells; "
                "give cell sides that divide image_size"
            )

    def _build(self) -> None:
        torch.manual_seed(self.config.seed)
        self.net_ = InpaintingUNet(self.config.width).to(self.device)

    def fit(self, images: ImageBatch) -> Self:
        x = as_image_tensor(images, "good images")
        self._check_config()
        if len(x) < 2:
            raise InputError("riad needs at least two good images to train")
        if self.config.batch_size < 1:
            raise InputError(f"riad: batch_size must be at least 1, got {self.config.batch_size}")
        cfg = self.config
        gen = self._start_training(x)
        data = self._working(x)
        self._build()
        opt = torch.optim.Adam(self.net_.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        cells = cfg.cells
        steps = cfg.epochs * math.ceil(len(data) / cfg.batch_size)

        def loss(step: int) -> torch.Tensor:
            batch = data[sample_batch(len(data), cfg.batch_size, gen)].to(self.device)
            cell = cells[int(torch.randint(len(cells), (1,), generator=gen))]
            masks = grid_masks(cfg.image_size, cell, cfg.n_masks, gen).to(self.device)
            rec = inpaint(self.net_, batch * 2 - 1, masks)
            return riad_loss(batch, (rec.float() + 1) / 2, cfg.msgms_scales)

        self._train("train", loss, {"net": self.net_}, opt, steps, gen)
        self.image_size_ = tuple(x.shape[-2:])
        return self

    def inference_masks(self) -> list[torch.Tensor]:
        """The masks each ``k`` inpaints with at test time: drawn from the seed, the same for every image."""
        gen = torch.Generator().manual_seed(self.config.seed + 1)
        return [grid_masks(self.config.image_size, c, self.config.n_masks, gen) for c in self.config.cells]

    def predict(self, images: ImageBatch) -> DetectorOutput:
        return self._predict_maps(images, self._map_fn)

    def _map_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        self.net_.eval()
        cfg = self.config
        masks = [m.to(self.device) for m in self.inference_masks()]
        k = cfg.mean_filter

        def anomaly_map(batch: torch.Tensor) -> torch.Tensor:
            x = self._working(batch)
            total = torch.zeros(len(x), 1, cfg.image_size, cfg.image_size, device=x.device)
            for hidden in masks:
                rec = (inpaint(self.net_, x * 2 - 1, hidden).float() + 1) / 2
                d = 1 - msgms_map(x, rec, cfg.msgms_scales)[:, None]
                total += F.avg_pool2d(d, k, stride=1, padding=k // 2, count_include_pad=False)
            amap = total / len(masks)
            if tuple(amap.shape[-2:]) != self.image_size_:
                amap = F.interpolate(amap, size=self.image_size_, mode="bilinear", align_corners=False)
            return gaussian_blur(amap[:, 0], cfg.blur_sigma)

        return anomaly_map

    def _state(self) -> dict[str, torch.Tensor]:
        return modules_state({"net": self.net_})

    def _set_state(self, state: dict[str, torch.Tensor]) -> None:
        self._build()
        load_modules({"net": self.net_}, state)


__all__ = ["RIAD", "InpaintingUNet", "RIADConfig", "grid_masks", "inpaint", "msgms_map", "riad_loss"]
