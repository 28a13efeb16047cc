"""PFM and PEFM (Wan et al., IEEE TII 2022 and 2022): two pretrained networks' features mapped into each
other. A small 1x1-convolution net learns, on good images only, to predict the target agent's
L2-normalised features from the source agent's and back (a shared middle layer couples the two
directions, "MB-PFM"); where the mapping errs, the image is anomalous.

The paper's agents are two ImageNet networks (ResNet34 -> ResNet50, levels 1-3). Offline we ship one
backbone, so by default the target of each source level is the *next level of the same network*,
upsampled to the source's grid: a mapping between two different pretrained representations of the
same patch, as the paper asks, at one network's cost. Name ``target_backbone`` (e.g.
``wide_resnet50_2`` beside ``backbone=resnet18``) to pair the same levels of two networks instead,
as the paper does.

PEFM adds a fixed 2-D sine-cosine position encoding to each direction's input, so the mapping can
depend on where a patch sits (objects whose parts have fixed places).

Map per level: the mean of the two directions' squared errors summed over channels; levels are
upsampled to the image, averaged, blurred (sigma 4, segad's common smoothing); score = its maximum.
Defaults follow the reference code (``MB-PFM-ResNet.py`` / ``PEFM_AD.py``): the "small" dual
projector, latent widths 200/400/900 (PEFM 200/400/800), Adam with weight decay 1e-5, lr 3e-3 for the
first level and 3e-4 for the others (PEFM 3e-4 for all), 200 epochs at batch 16.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Self

import torch
import torch.nn.functional as F
from torch import nn

from detectors.backbones import LAYERS, Backbone, load_backbone
from detectors.base import DetectorOutput, ImageBatch, as_image_tensor
from detectors.errors import InputError
from detectors.maps import gaussian_blur, parse_layers, parse_numbers
from detectors.training import TrainableConfig, TrainableDetector, load_modules, modules_state, sample_batch


@dataclass(frozen=True)
class PFMConfig(TrainableConfig):
    layers: str = "layer1+layer2+layer3"  # the source agent's levels (the paper's out2-out4)
    target_backbone: str = ""  # "": the next level of ``backbone``; else that network's same levels
    latent_dims: str = "200+400+900"  # one per level
    learning_rates: str = "3e-3+3e-4+3e-4"  # one per level
    weight_decay: float = 1e-5
    epochs: int = 200
    position_encoding: bool = False
    blur_sigma: float = 4.0


@dataclass(frozen=True)
class PEFMConfig(PFMConfig):
    latent_dims: str = "200+400+800"
    learning_rates: str = "3e-4+3e-4+3e-4"
    position_encoding: bool = True


def position_encoding(channels: int, h: int, w: int) -> torch.Tensor:
    """(C, h, w) sine-cosine encoding, half the channels for x and half for y (PEFM's, after DETR's)."""
    if channels % 4:
        raise InputError(f"position encoding needs a channel count divisible by 4, got {channels}")
    d = channels // 2
    freq = torch.exp(torch.arange(0.0, d, 2) * -(math.log(1e4) / d))  # (d/2,)
    x = torch.arange(w, dtype=torch.float32)[:, None] * freq  # (w, d/2)
    y = torch.arange(h, dtype=torch.float32)[:, None] * freq
    pe = torch.zeros(channels, h, w)
    pe[0:d:2] = torch.sin(x).T[:, None, :].expand(-1, h, -1)
    pe[1:d:2] = torch.cos(x).T[:, None, :].expand(-1, h, -1)
    pe[d::2] = torch.sin(y).T[:, :, None].expand(-1, -1, w)
    pe[d + 1 :: 2] = torch.cos(y).T[:, :, None].expand(-1, -1, w)
    return pe


def _unit(cin: int, cout: int, last: bool = False) -> nn.Sequential:
    if last:
        return nn.Sequential(nn.Conv2d(cin, cout, 1))
    return nn.Sequential(nn.Conv2d(cin, cout, 1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class DualProjection(nn.Module):
    """Source -> target and target -> source through 1x1 convolutions sharing one middle layer."""

    def __init__(self, cs: int, ct: int, latent: int) -> None:
        super().__init__()
        self.encode_s = nn.Sequential(_unit(cs, cs // 2 + latent), _unit(cs // 2 + latent, 2 * latent))
        self.encode_t = nn.Sequential(_unit(ct, ct // 2 + latent), _unit(ct // 2 + latent, 2 * latent))
        self.shared = nn.Conv2d(2 * latent, latent, 1)
        self.decode_t = nn.Sequential(
            _unit(latent, 2 * latent), _unit(2 * latent, ct // 2 + latent), _unit(ct // 2 + latent, ct, last=True)
        )
        self.decode_s = nn.Sequential(
            _unit(latent, 2 * latent), _unit(2 * latent, cs // 2 + latent), _unit(cs // 2 + latent, cs, last=True)
        )

    def forward(self, xs: torch.Tensor, xt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(source rebuilt from target, target predicted from source)."""
        return self.decode_s(self.shared(self.encode_t(xt))), self.decode_t(self.shared(self.encode_s(xs)))


class PFM(TrainableDetector):
    name = "pfm"
    config_class = PFMConfig
    config: PFMConfig

    def __init__(self, config: PFMConfig | None = None, **overrides) -> None:
        super().__init__(config, **overrides)
        self._target: Backbone | None = None

    # --- the two agents -------------------------------------------------------------------------
    def _pairs(self) -> list[tuple[str, str]]:
        """(source level, target level) per mapped level."""
        layers = parse_layers(self.config.layers)
        if self.config.target_backbone:
            return [(name, name) for name in layers]
        if "layer4" in layers:
            raise InputError(
                f"{self.name}: layers={self.config.layers!r} maps each level to the next one of the same "
                "network, and layer4 has none; drop layer4 or name a target_backbone"
            )
        return [(name, LAYERS[LAYERS.index(name) + 1]) for name in layers]

    @property
    def target(self) -> Backbone:
        if not self.config.target_backbone:
            return self.backbone
        if self._target is None:
            self._target = load_backbone(self.config.target_backbone, self.device)
        return self._target

    def _agents(self, batch: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per level, the L2-normalised (source, target) features on the source's grid."""
        pairs = self._pairs()
        sources, targets = [s for s, _ in pairs], [t for _, t in pairs]
        with torch.inference_mode():
            if self.config.target_backbone:
                src, tgt = self.backbone(batch, sources), self.target(batch, targets)
            else:
                src = tgt = self.backbone(batch, sorted({*sources, *targets}))
            out = []
            for s, t in pairs:
                xs, xt = src[s].float(), tgt[t].float()
                if xt.shape[-2:] != xs.shape[-2:]:
                    xt = F.interpolate(xt, size=xs.shape[-2:], mode="bilinear", align_corners=False)
                out.append((F.normalize(xs, dim=1), F.normalize(xt, dim=1)))
        return out

    def _all_agents(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every training image's agent features, computed once and kept on the CPU (the agents are frozen)."""
        parts: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
        for batch in self._batches(x, "features"):
            parts.append([(s.cpu(), t.cpu()) for s, t in self._agents(batch)])
        return [
            (torch.cat([p[k][0] for p in parts]), torch.cat([p[k][1] for p in parts])) for k in range(len(parts[0]))
        ]

    # --- the projectors -------------------------------------------------------------------------
    def _build(self, shapes: list[tuple[int, int, int, int]]) -> None:
        """One dual projector per level; ``shapes`` = (source channels, target channels, h, w)."""
        latents = parse_numbers(self.config.latent_dims, len(shapes), "latent_dims", int)
        torch.manual_seed(self.config.seed)
        self.projectors_ = nn.ModuleList(
            DualProjection(cs, ct, d) for (cs, ct, _, _), d in zip(shapes, latents, strict=True)
        ).to(self.device)
        self.shapes_ = shapes
        self._encodings = [
            (position_encoding(cs, h, w).to(self.device), position_encoding(ct, h, w).to(self.device))
            if self.config.position_encoding
            else None
            for cs, ct, h, w in shapes
        ]

    def _errors(self, level: int, xs: torch.Tensor, xt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, h, w) squared errors summed over channels: source rebuilt, target predicted."""
        pe = self._encodings[level]
        ins, int_ = (xs + pe[0], xt + pe[1]) if pe is not None else (xs, xt)
        s_hat, t_hat = self.projectors_[level](ins, int_)
        return ((xs - s_hat.float()) ** 2).sum(1), ((xt - t_hat.float()) ** 2).sum(1)

    def fit(self, images: ImageBatch) -> Self:
        x = as_image_tensor(images, "good images")
        pairs = self._pairs()
        self._require_size(x, sorted({level for pair in pairs for level in pair}), why=", sources and targets")
        rates = parse_numbers(self.config.learning_rates, len(pairs), "learning_rates", float)
        parse_numbers(self.config.latent_dims, len(pairs), "latent_dims", int)  # fail before the features are computed
        gen = self._start_training(x)
        feats = self._all_agents(x)
        self._build([(s.shape[1], t.shape[1], s.shape[2], s.shape[3]) for s, t in feats])
        opt = torch.optim.Adam(
            [{"params": p.parameters(), "lr": lr} for p, lr in zip(self.projectors_, rates, strict=True)],
            weight_decay=self.config.weight_decay,
        )
        steps_per_epoch = -(-len(x) // self.config.batch_size)

        def loss(step: int) -> torch.Tensor:
            idx = sample_batch(len(x), self.config.batch_size, gen)
            total = torch.zeros((), device=self.device)
            for level, (s, t) in enumerate(feats):
                es, et = self._errors(level, s[idx].to(self.device), t[idx].to(self.device))
                total = total + (es.mean() + et.mean()) / s.shape[1]  # the reference's per-element MSE
            return total

        self._train("train", loss, {"projectors": self.projectors_}, opt, self.config.epochs * steps_per_epoch, gen)
        self.image_size_ = tuple(x.shape[-2:])
        return self

    def predict(self, images: ImageBatch) -> DetectorOutput:
        return self._predict_maps(images, self._map_fn)

    def _map_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        self.projectors_.eval()

        def anomaly_map(batch: torch.Tensor) -> torch.Tensor:
            levels = []
            for level, (xs, xt) in enumerate(self._agents(batch)):
                es, et = self._errors(level, xs, xt)
                m = (es + et) / 2
                levels.append(F.interpolate(m[:, None], size=self.image_size_, mode="bilinear", align_corners=False))
            return gaussian_blur(torch.cat(levels, 1).mean(1), self.config.blur_sigma)

        return anomaly_map

    def _state(self) -> dict[str, torch.Tensor]:
        return {**modules_state({"projectors": self.projectors_}), "shapes_": torch.tensor(self.shapes_)}

    def _set_state(self, state: dict[str, torch.Tensor]) -> None:
        self._build([tuple(int(v) for v in row) for row in state.pop("shapes_").tolist()])
        load_modules({"projectors": self.projectors_}, state)


class PEFM(PFM):
    name = "pefm"
    config_class = PEFMConfig
    config: PEFMConfig


__all__ = ["PEFM", "PFM", "PEFMConfig", "PFMConfig", "position_encoding"]
