"""CFA (Lee, Lee & Song, IEEE Access 2022): coupled-hypersphere-based feature adaptation.

A frozen backbone's levels (3x3 averaged, upsampled to the finest, concatenated) pass through a
trainable patch descriptor, a 1x1 CoordConv, so the adapted features know where they sit. A memory
bank of centres, one per feature position (the mean over the good images of the descriptor's
initial output there), stays fixed; the descriptor learns to pull each patch into the hyperspheres
of its K nearest centres (attraction) while keeping it out of the J next ones by a margin alpha
(repulsion), which sharpens the boundary the nearest-centre distance draws. Map: the softmin-
weighted distance to the nearest centre per patch (the reference code's score), upsampled, blurred;
score = its maximum.

Defaults follow the reference code (sungwool/CFA_for_anomaly_localization, ``trainer_cfa.py`` and
``utils/cfa.py``): gamma_d = gamma_c = 1, K = J = 3, r initialised at 1e-5 and trained, alpha 0.1,
nu 1e-3, AdamW with AMSGrad (lr 1e-3, weight decay 5e-4), 30 epochs of batches of 4. The paper's
WRN50 levels 1-3 are EfficientNet-Lite0's here (24 + 40 + 112 = 176 channels at stride 4).
The reference differentiates through the whole (patches x centres) distance matrix; here the K + J
nearest centres are found in chunks without autograd and only the distances to them are recomputed
with it: the same values and gradients, in a fraction of the memory.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import ClassVar, Self

import torch
import torch.nn.functional as F
from torch import nn

from detectors.base import DetectorOutput, ImageBatch, as_image_tensor
from detectors.errors import InputError
from detectors.maps import parse_layers, pooled_features, to_image_maps
from detectors.neighbours import k_nearest
from detectors.training import TrainableConfig, TrainableDetector, load_modules, modules_state, sample_batch


@dataclass(frozen=True)
class CFAConfig(TrainableConfig):
    RESULT_NEUTRAL: ClassVar[Mapping[str, str]] = MappingProxyType(
        {
            **TrainableConfig.RESULT_NEUTRAL,
            "query_chunk": "the nearest-centre search takes this many patches at a time, each patch's distances "
            "computed on their own, so it only bounds memory (results move by float32 rounding at most)",
        }
    )

    layers: str = "layer1+layer2+layer3"
    gamma_d: int = 1  # descriptor output = input channels // gamma_d
    gamma_c: int = 1  # memory bank = positions // gamma_c centres (k-means when > 1)
    k_nearest: int = 3  # K: centres a patch is attracted to
    j_repulse: int = 3  # J: the next centres it is pushed away from
    radius: float = 1e-5  # initial hypersphere radius r (trained, as in the reference)
    alpha: float = 0.1  # repulsion margin
    nu: float = 1e-3  # both losses are scaled by 1 / nu
    epochs: int = 30
    learning_rate: float = 1e-3
    weight_decay: float = 5e-4
    blur_sigma: float = 4.0
    batch_size: int = 4
    query_chunk: int = 4096


def _coords(x: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, C + 2, h, w): row then column coordinate in [-1, 1] appended (CoordConv)."""
    b, _, h, w = x.shape
    rows = torch.linspace(-1.0, 1.0, h, device=x.device, dtype=x.dtype).view(1, 1, h, 1).expand(b, 1, h, w)
    cols = torch.linspace(-1.0, 1.0, w, device=x.device, dtype=x.dtype).view(1, 1, 1, w).expand(b, 1, h, w)
    return torch.cat([x, rows, cols], dim=1)


class Descriptor(nn.Module):
    """The patch descriptor: a 1x1 convolution over the features plus their coordinates, and the
    trainable radius r of the hyperspheres (kept here so it is saved and optimised with the conv)."""

    def __init__(self, channels: int, out_channels: int, radius: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels + 2, out_channels, 1)
        self.r = nn.Parameter(torch.full((1,), float(radius)))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.conv(_coords(feats))


class CFA(TrainableDetector):
    name = "cfa"
    config_class = CFAConfig
    config: CFAConfig

    def _check_config(self) -> None:
        c = self.config
        for field in ("gamma_d", "gamma_c", "k_nearest", "j_repulse", "epochs", "batch_size", "query_chunk"):
            if getattr(c, field) < 1:
                raise InputError(f"cfa: {field} must be at least 1, got {getattr(c, field)}")
        if c.nu <= 0:
            raise InputError(f"cfa: nu must be positive, got {c.nu}")

    def _pool(self, levels: list[torch.Tensor]) -> torch.Tensor:
        """The reference's patch features: each level 3x3-averaged, upsampled to the finest, concatenated."""
        names = parse_layers(self.config.layers)
        return pooled_features(dict(zip(names, levels, strict=True)), names, 3)

    def _build(self) -> None:
        channels = sum(self.backbone.channels[n] for n in parse_layers(self.config.layers))
        out = channels // self.config.gamma_d
        if out < 1:
            raise InputError(f"cfa: gamma_d={self.config.gamma_d} leaves no descriptor channels (features: {channels})")
        self.descriptor_ = Descriptor(channels, out, self.config.radius).to(self.device)

    def _init_centres(self, levels: list[torch.Tensor]) -> torch.Tensor:
        """The memory bank: the untrained descriptor's output averaged over the good images, one centre per
        position (the reference's running mean over batches, exact here), optionally k-means-compressed."""
        total, n = None, 0
        with torch.no_grad():
            for s in range(0, levels[0].shape[0], self.config.batch_size):
                phi = self.descriptor_(self._pool([f[s : s + self.config.batch_size].to(self.device) for f in levels]))
                total = phi.sum(0) if total is None else total + phi.sum(0)
                n += phi.shape[0]
        centres = (total / n).flatten(1).T.contiguous()  # (h * w, C)
        if self.config.gamma_c > 1:
            from sklearn.cluster import KMeans

            k = centres.shape[0] // self.config.gamma_c
            km = KMeans(n_clusters=k, max_iter=3000, n_init=1, random_state=self.config.seed)
            centres = torch.as_tensor(km.fit(centres.cpu().numpy()).cluster_centers_, dtype=torch.float32)
        return centres.to(self.device)

    def fit(self, images: ImageBatch) -> Self:
        x = as_image_tensor(images, "good images")
        self._check_config()
        if min(x.shape[-2:]) < 32:
            raise InputError(
                f"cfa needs images of at least 32x32 (its deepest level is at stride 16); got {tuple(x.shape[-2:])}"
            )
        gen = self._start_training(x)
        self._build()
        levels = self._frozen_features(x, self.config.layers)
        self.centres_ = self._init_centres(levels)
        k, j = self.config.k_nearest, self.config.j_repulse
        if self.centres_.shape[0] < k + j:
            raise InputError(
                f"cfa: the memory bank has {self.centres_.shape[0]} centres, fewer than k_nearest + j_repulse "
                f"= {k + j}; use larger images or a smaller gamma_c"
            )
        opt = torch.optim.AdamW(
            self.descriptor_.parameters(),
            lr=self.config.learning_rate,
            weight_decay=self.config.weight_decay,
            amsgrad=True,
        )
        steps_per_epoch = -(-len(x) // self.config.batch_size)
        nu, alpha = self.config.nu, self.config.alpha

        def loss(step: int) -> torch.Tensor:
            idx = sample_batch(len(x), self.config.batch_size, gen)
            phi = self.descriptor_(self._pool([f[idx].to(self.device, non_blocking=True) for f in levels]))
            phi = phi.flatten(2).transpose(1, 2).reshape(-1, phi.shape[1])  # (B * h * w, C)
            _, nearest = k_nearest(phi, self.centres_, k + j, self.config.query_chunk)
            d2 = (phi[:, None, :] - self.centres_[nearest]).pow(2).sum(-1)  # (P, K + J), with gradient
            r2 = self.descriptor_.r.pow(2)
            attract = F.relu(d2[:, :k] - r2).mean()
            repulse = F.relu(r2 - d2[:, k:] - alpha).mean()
            return (attract + repulse) / nu

        self._train("train", loss, {"descriptor": self.descriptor_}, opt, self.config.epochs * steps_per_epoch, gen)
        self.image_size_ = tuple(x.shape[-2:])
        return self

    def predict(self, images: ImageBatch) -> DetectorOutput:
        return self._predict_maps(images, self._map_fn)

    def _map_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        self.descriptor_.eval()
        centres = self.centres_.to(self.device)
        names = parse_layers(self.config.layers)
        k = self.config.k_nearest

        def anomaly_map(batch: torch.Tensor) -> torch.Tensor:
            feats = self.backbone(batch, names)
            phi = self.descriptor_(self._pool([feats[n] for n in names]))
            b, c, h, w = phi.shape
            d2, _ = k_nearest(phi.flatten(2).transpose(1, 2).reshape(-1, c), centres, k, self.config.query_chunk)
            d = d2.sqrt()
            # The reference's score: the nearest distance, weighted by its softmin share among the K nearest.
            patch = F.softmin(d, dim=1)[:, 0] * d[:, 0]
            return to_image_maps(patch.view(b, h, w), self.image_size_, self.config.blur_sigma)

        return anomaly_map

    def _state(self) -> dict[str, torch.Tensor]:
        return {**modules_state({"descriptor": self.descriptor_}), "centres_": self.centres_}

    def _set_state(self, state: dict[str, torch.Tensor]) -> None:
        self._build()
        self.centres_ = state.pop("centres_").to(self.device)
        load_modules({"descriptor": self.descriptor_}, state)
