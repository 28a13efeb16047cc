"""PPDM: diversity-measurable anomaly detection (Liu et al., CVPR 2023, "DMAD"; code FlappyPeggy/DMAD, ``DMAD-PPDM``).

Reconstruction-based detectors rebuild anomalies too well when they generalise, or flag normal
variety when they do not. DMAD separates the two: a *pyramid deformation module* (PDM) first moves
each image's pixels (a coarse and a fine deformation field, applied in turn) towards the normal
layout the reconstruction network has learnt, and a reconstruction network (frozen encoder, a
vector-quantised one-class bottleneck holding the normal prototypes, a trainable decoder, as in
reverse distillation) rebuilds the deformed image's features. Geometric "diversity" goes into the
deformation fields, whose magnitude then measures how abnormal the layout is; what the deformation
cannot explain stays in the reconstruction error. The PDM also predicts the inverse fields, trained
to undo the deformation, so the error map can be moved back onto the input's pixels.

Training loss (``Train_mvtec.py``, ``resnet.py``): per level 1 - cosine of the flattened encoder and
decoder features, plus the deformation loss (mean field magnitudes of both forward fields, a 3x3
Laplacian smoothness term on all four fields, and the MSE between the input and its deformed copy
sent back through the inverse fields, weight ``inverse_weight`` = the repo's gamma 1), plus the VQ
loss (codebook MSE + 0.25 x commitment MSE; straight-through gradients).

Maps (``test.py``): the reconstruction error (sum over levels of 1 - cosine per position, upsampled),
moved back by the inverse fields, blurred with sigma 4; the deformation map: the fine inverse
field's magnitude moved back by the coarse inverse field, plus the coarse one's, blurred with sigma 4.

Defaults, from ``DMAD-PPDM`` (``Train_mvtec.py``, ``resnet.py``, ``test.py``) unless said:

* 400 epochs at ``batch_size=8``; AdamW (lr 0.005, betas 0.5 / 0.999, weight decay 0.01, torch's
  default, which the repo keeps), cosine annealing to 0 over the epochs (per epoch, as the repo's
  ``CosineAnnealingLR(T_max=epochs)``; one epoch = ceil(n / batch_size) random batches);
* the image-level ("sp") model, with vector quantisation: a codebook of 200 prototypes of the
  deepest level's features (``codebook_size``), uniform(-1/K, 1/K) initialisation;
* bottleneck: each level reduced to 64 channels by a 3x3 conv (the repo's 16 x expansion 4), brought
  to stride 16 by stride-2 3x3 convs, concatenated with the quantised deepest level, then 3 residual
  bottleneck blocks (the first with stride 2) to 2,048 channels with 1,024 inside (WRN50's);
* PDM: two CoordConv 3x3 layers (64 channels, coordinates + coordinates of 4 px cells), a residual
  block, then per field a head: coarse at stride 8 (three stride-2 convs), fine at stride 2 (one), each
  ending in tanh, scaled to at most 8 px (coarse) and 3 px (fine) of a 256 px image
  (``coarse_shift=8/256``, ``fine_shift=3/256`` of the side), bilinearly upsampled to full size;
* deformation weight 0.05 (the repo's for all but screw, carpet and metal nut, which get 0.2).

Deviations, and why:

* Encoder: frozen EfficientNet-Lite0 ``layer1..layer3`` instead of WideResNet50's (not shipped here;
  ``backbone=wide_resnet50_2`` uses it when its weights are in torchvision's cache). The codebook's
  prototypes have the deepest level's width (112 for Lite0, 1,024 for WRN50).
* Decoder: ``detectors.rd4ad``'s (per level a 2x transposed conv + 3x3 conv and a 1x1 head) rather
  than WRN50's mirrored bottleneck stages, whose depth is sized for 2,048-channel WRN50 features.
* Combining the two maps: the repo min-max normalises the image maxima of each map *over the test
  set* and adds them (0.05 x deformation), then reports the better AUROC of that sum and of the
  reconstruction alone. Neither is possible for a detector that scores one image at a time without
  labels, so here each map is divided by its mean image maximum over the *training* images (fixed
  at fit) and the map is ``reconstruction + deformation_weight x deformation``; the score is its
  maximum (the repo's per-image maximum). Only the ratio of the two normalisers changes the
  ranking, as in the repo's min-max.
* Sides must be divisible by 32 (the bottleneck is at stride 32 and the decoder doubles back).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Self

import torch
import torch.nn.functional as F
from torch import nn

from detectors.base import DetectorOutput, ImageBatch, as_image_tensor
from detectors.errors import InputError
from detectors.maps import gaussian_blur
from detectors.rd4ad import Decoder
from detectors.training import TrainableConfig, TrainableDetector, load_modules, modules_state, sample_batch

_LEVELS = ("layer1", "layer2", "layer3")
_DOWNSAMPLING = 32
_CELL = 4  # CoordConv's second pair of coordinates: position of the 4x4 cell


@dataclass(frozen=True)
class PPDMConfig(TrainableConfig):
    batch_size: int = 8
    epochs: int = 400
    learning_rate: float = 0.005
    weight_decay: float = 0.01
    codebook_size: int = 200
    commitment: float = 0.25
    reduce_channels: int = 64
    bottleneck_channels: int = 2048
    bottleneck_blocks: int = 3
    offset_width: int = 64
    coarse_shift: float = 8 / 256  # largest coarse displacement, as a share of the image side
    fine_shift: float = 3 / 256
    inverse_weight: float = 1.0  # the repo's gamma: weight of the inverse-deformation MSE
    deformation_weight: float = 0.05
    blur_sigma: float = 4.0

    def __post_init__(self) -> None:
        for name in ("epochs", "codebook_size", "reduce_channels", "bottleneck_blocks", "offset_width"):
            if getattr(self, name) < 1:
                raise InputError(f"ppdm: {name} must be at least 1, got {getattr(self, name)}")
        if self.bottleneck_channels < 2:
            raise InputError(f"ppdm: bottleneck_channels must be at least 2, got {self.bottleneck_channels}")
        for name in ("coarse_shift", "fine_shift"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise InputError(
                    f"ppdm: {name} must be in (0, 1] (a share of the image side), got {getattr(self, name)}"
                )
        for name in ("commitment", "inverse_weight", "deformation_weight", "weight_decay"):
            if getattr(self, name) < 0:
                raise InputError(f"ppdm: {name} must be >= 0, got {getattr(self, name)}")


# --- the pyramid deformation module ------------------------------------------------------------
def _coordinates(h: int, w: int, device: torch.device) -> torch.Tensor:
    """(1, 4, h, w): per axis the position within its 4 px cell and the cell's position, both in [-1, 1]."""

    def axis(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = torch.arange(n, dtype=torch.float32, device=device)
        cells = max(n // _CELL, 1)
        coarse = torch.div(i, _CELL, rounding_mode="floor").clamp(max=cells - 1) / max(cells - 1, 1)
        return (i / max(n - 1, 1) - coarse) * 2 - 1, coarse * 2 - 1

    rf, rc = axis(h)
    cf, cc = axis(w)
    planes = [rf[:, None].expand(h, w), rc[:, None].expand(h, w), cf[None].expand(h, w), cc[None].expand(h, w)]
    return torch.stack(planes)[None]


class CoordConv(nn.Module):
    """A 3x3 convolution that also sees each pixel's coordinates (4 extra input channels)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin + 4, cout, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        coords = _coordinates(*x.shape[-2:], x.device).to(x.dtype).expand(len(x), -1, -1, -1)
        return self.conv(torch.cat([x, coords], dim=1))


class _ResBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, width, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _field_head(width: int, halvings: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for k in range(halvings):
        layers += [
            nn.Conv2d(2 * width if k == 0 else width, width, 3, 2, 1),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*layers, nn.Conv2d(width, 2, 3, padding=1), nn.Tanh())


class PyramidDeformation(nn.Module):
    """Predicts a coarse (stride 8) and a fine (stride 2) deformation field and their inverses, in
    ``grid_sample`` units ((B, H, W, 2), x then y, 2 = the image side)."""

    def __init__(self, width: int, coarse_shift: float, fine_shift: float) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            CoordConv(3, width),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            CoordConv(width, width),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        self.res = nn.Sequential(_ResBlock(width), nn.BatchNorm2d(width))
        self.coarse, self.coarse_inverse = _field_head(width, 3), _field_head(width, 3)
        self.fine, self.fine_inverse = _field_head(width, 1), _field_head(width, 1)
        self.coarse_scale, self.fine_scale = 2 * coarse_shift, 2 * fine_shift

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.stem(x)
        h = torch.cat([self.res(h), h], dim=1)
        size = x.shape[-2:]

        def field(head: nn.Module, scale: float) -> torch.Tensor:
            f = F.interpolate(head(h) * scale, size=size, mode="bilinear", align_corners=True)
            return f.permute(0, 2, 3, 1)

        return (
            field(self.coarse, self.coarse_scale),
            field(self.fine, self.fine_scale),
            field(self.coarse_inverse, self.coarse_scale),
            field(self.fine_inverse, self.fine_scale),
        )


def _identity_grid(h: int, w: int, device: torch.device) -> torch.Tensor:
    ys = torch.linspace(-1, 1, h, device=device)
    xs = torch.linspace(-1, 1, w, device=device)
    return torch.stack([xs[None].expand(h, w), ys[:, None].expand(h, w)], dim=-1)[None]


def warp(x: torch.Tensor, field: torch.Tensor) -> torch.Tensor:
    """Sample ``x`` at the identity grid moved by ``field`` (clamped to the image), bilinearly."""
    grid = (_identity_grid(*x.shape[-2:], x.device) + field).clamp(-1, 1)
    return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="zeros", align_corners=True)


def _magnitude(field: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 2) -> (B, 1, H, W) displacement lengths."""
    return torch.linalg.vector_norm(field, dim=-1)[:, None]


def smoothness(field: torch.Tensor) -> torch.Tensor:
    """Mean |3x3 Laplacian| of a field (centre 1, neighbours -1/8, both components summed, zero padding)."""
    kernel = torch.full((1, 2, 3, 3), -1.0 / 8, dtype=field.dtype, device=field.device)
    kernel[:, :, 1, 1] = 1.0
    return F.conv2d(field.permute(0, 3, 1, 2), kernel, padding=1).abs().mean()


# --- the vector-quantised bottleneck ----------------------------------------------------------
class VectorQuantiser(nn.Module):
    """Nearest of ``codes`` prototypes per position; VQ-VAE loss; straight-through gradients."""

    def __init__(self, codes: int, dim: int, commitment: float) -> None:
        super().__init__()
        self.codebook = nn.Parameter(torch.empty(codes, dim).uniform_(-1 / codes, 1 / codes))
        self.commitment = commitment

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        dist = (flat**2).sum(1, keepdim=True) + (self.codebook**2).sum(1) - 2 * flat @ self.codebook.t()
        q = self.codebook[dist.argmin(dim=1)].view(z.shape[0], z.shape[2], z.shape[3], -1).permute(0, 3, 1, 2)
        loss = F.mse_loss(q, z.detach()) + self.commitment * F.mse_loss(q.detach(), z)
        return z + (q - z).detach(), loss


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class _Bottleneck(nn.Module):
    """ResNet's 1x1 - 3x3 - 1x1 residual block, ``mid`` channels inside."""

    def __init__(self, cin: int, cout: int, mid: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, stride, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.skip = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.skip(x))


class VQBottleneck(nn.Module):
    """Every level reduced and brought to the deepest level's stride, beside that level quantised; then
    residual blocks down one more stride to the one-class embedding."""

    def __init__(self, channels: list[int], cfg: PPDMConfig) -> None:
        super().__init__()
        r, n = cfg.reduce_channels, len(channels)
        self.reduce = nn.ModuleList(_conv_bn_relu(c, r) for c in channels)
        self.align = nn.ModuleList(nn.Sequential(*[_conv_bn_relu(r, r, 2) for _ in range(n - 1 - k)]) for k in range(n))
        self.quantiser = VectorQuantiser(cfg.codebook_size, channels[-1], cfg.commitment)
        out, mid = cfg.bottleneck_channels, cfg.bottleneck_channels // 2
        blocks = [_Bottleneck(r * n + channels[-1], out, mid, 2)]
        blocks += [_Bottleneck(out, out, mid, 1) for _ in range(cfg.bottleneck_blocks - 1)]
        self.blocks = nn.Sequential(*blocks)

    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        quantised, vq_loss = self.quantiser(feats[-1])
        parts = [align(reduce(f)) for reduce, align, f in zip(self.reduce, self.align, feats, strict=True)]
        return self.blocks(torch.cat([*parts, quantised], dim=1)), vq_loss


# --- the detector -----------------------------------------------------------------------------
class PPDM(TrainableDetector):
    name = "ppdm"
    config_class = PPDMConfig
    config: PPDMConfig

    def _build(self) -> None:
        cfg = self.config
        channels = [self.backbone.channels[n] for n in _LEVELS]
        torch.manual_seed(cfg.seed)
        self.deformation_ = PyramidDeformation(cfg.offset_width, cfg.coarse_shift, cfg.fine_shift).to(self.device)
        self.bottleneck_ = VQBottleneck(channels, cfg).to(self.device)
        self.decoder_ = Decoder(channels, cfg.bottleneck_channels).to(self.device)

    def _check_input(self, x: torch.Tensor) -> None:
        h, w = x.shape[-2:]
        if h % _DOWNSAMPLING or w % _DOWNSAMPLING:
            raise InputError(
                f"ppdm needs image sides divisible by {_DOWNSAMPLING} (its bottleneck is at stride 32 and the "
                f"decoder doubles back to each level); got {h}x{w}: resize the images, e.g. to 256x256"
            )

    def _reconstruct(self, deformed: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """Encoder levels of the deformed image (gradients reach the PDM through the frozen encoder),
        their reconstruction and the VQ loss."""
        feats = self.backbone(deformed, _LEVELS)
        enc = [feats[n] for n in _LEVELS]
        z, vq_loss = self.bottleneck_(enc)
        return enc, self.decoder_(z), vq_loss

    def fit(self, images: ImageBatch) -> Self:
        x = as_image_tensor(images, "good images")
        self._check_input(x)
        if len(x) < 2:
            raise InputError("ppdm needs at least two good images to train (batch norm needs two per batch)")
        cfg = self.config
        if cfg.batch_size < 2:
            raise InputError(f"ppdm needs batch_size >= 2 for batch norm, got {cfg.batch_size}")
        gen = self._start_training(x)
        self._build()
        params = [p for m in self._modules().values() for p in m.parameters()]
        opt = torch.optim.AdamW(params, lr=cfg.learning_rate, betas=(0.5, 0.999), weight_decay=cfg.weight_decay)
        steps_per_epoch = -(-len(x) // cfg.batch_size)
        epochs = cfg.epochs
        # The repo's CosineAnnealingLR(T_max=epochs), stepped once per epoch, as a LambdaLR over steps.
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: 0.5 * (1 + math.cos(math.pi * (s // steps_per_epoch) / epochs))
        )

        def loss(step: int) -> torch.Tensor:
            img = x[sample_batch(len(x), cfg.batch_size, gen)].to(self.device)
            coarse, fine, coarse_inv, fine_inv = self.deformation_(img)
            deformed = warp(warp(img, coarse), fine)
            back = warp(warp(deformed, fine_inv), coarse_inv)
            deformation_loss = (
                _magnitude(coarse).mean()
                + _magnitude(fine).mean()
                + sum(smoothness(f) for f in (coarse, fine, coarse_inv, fine_inv))
                + cfg.inverse_weight * F.mse_loss(back.float(), img.float())
            )
            enc, dec, vq_loss = self._reconstruct(deformed)
            main = sum(
                (1 - F.cosine_similarity(e.flatten(1).float(), d.flatten(1).float(), dim=1)).mean()
                for e, d in zip(enc, dec, strict=True)
            )
            return main + deformation_loss + vq_loss

        self._train("train", loss, self._modules(), opt, epochs * steps_per_epoch, gen, scheduler=sched)
        self.image_size_ = tuple(x.shape[-2:])
        # The normalisers: mean image maximum of each map over the training images.
        rec_max, def_max = [], []
        self._eval()
        for batch in self._batches(x, "normalisers"):
            with torch.inference_mode():
                rec, deform = self._maps(batch)
            rec_max.append(rec.flatten(1).max(1).values)
            def_max.append(deform.flatten(1).max(1).values)
        eps = torch.finfo(torch.float32).tiny
        self.scales_ = torch.stack([torch.cat(rec_max).mean(), torch.cat(def_max).mean()]).float().clamp_min(eps).cpu()
        return self

    def _maps(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, H, W) reconstruction-error and deformation maps, on the input's pixels, blurred."""
        coarse, fine, coarse_inv, fine_inv = self.deformation_(batch)
        enc, dec, _ = self._reconstruct(warp(warp(batch, coarse), fine))
        size = batch.shape[-2:]
        rec = sum(
            F.interpolate(
                (1 - F.cosine_similarity(e.float(), d.float(), dim=1))[:, None],
                size=size,
                mode="bilinear",
                align_corners=True,
            )
            for e, d in zip(enc, dec, strict=True)
        )
        rec = warp(warp(rec, fine_inv.float()), coarse_inv.float())[:, 0]
        deform = (warp(_magnitude(fine_inv.float()), coarse_inv.float()) + _magnitude(coarse_inv.float()))[:, 0]
        return gaussian_blur(rec, self.config.blur_sigma), gaussian_blur(deform, self.config.blur_sigma)

    def _eval(self) -> None:
        for m in self._modules().values():
            m.eval()

    def predict(self, images: ImageBatch) -> DetectorOutput:
        return self._predict_maps(images, self._map_fn)

    def _map_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        self._eval()
        scales = self.scales_.to(self.device)

        def anomaly_map(batch: torch.Tensor) -> torch.Tensor:
            rec, deform = self._maps(batch)
            return rec / scales[0] + self.config.deformation_weight * deform / scales[1]

        return anomaly_map

    def _modules(self) -> dict[str, nn.Module]:
        return {"deformation": self.deformation_, "bottleneck": self.bottleneck_, "decoder": self.decoder_}

    def _state(self) -> dict[str, torch.Tensor]:
        return {**modules_state(self._modules()), "scales": self.scales_}

    def _set_state(self, state: dict[str, torch.Tensor]) -> None:
        self.scales_ = state.pop("scales")
        self._build()
        load_modules(self._modules(), state)


__all__ = ["PPDM", "PPDMConfig", "PyramidDeformation", "VQBottleneck", "VectorQuantiser", "smoothness", "warp"]
