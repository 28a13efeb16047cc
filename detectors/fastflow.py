"""FastFlow (Yu et al., 2021): a 2-D normalising flow per backbone level maps good-image features to
a standard normal; a feature the flow finds unlikely is anomalous.

Each level's flow is a stack of affine coupling blocks whose subnets are small convolutions
(alternating 3x3 and 1x1, as in the paper), each followed by a learned per-channel affine and a
fixed seeded channel permutation. Log-likelihoods are exact, so the loss is the negative
log-likelihood per feature dimension. The backbone is frozen, so its features of the fit images are
computed once and the loop trains on them: on a CPU that is most of the speed.

Map: 1 - the mean over levels of exp(-0.5 * mean_c z^2) (the paper's probability map, shifted to
start at 0 for good regions), upsampled to the image and blurred; score = its maximum.
Defaults: Lite0 levels 1-3, 8 blocks, hidden ratio 1, clamp 2, Adam 1e-3 with weight decay 1e-5,
100 epochs (the paper trains 500; on ELPV the AUROC stops moving well before 100).
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
from detectors.training import TrainableConfig, TrainableDetector, sample_batch


@dataclass(frozen=True)
class FastFlowConfig(TrainableConfig):
    layers: str = "layer1+layer2+layer3"
    flow_steps: int = 8
    hidden_ratio: float = 1.0
    conv3x3_only: bool = False
    clamp: float = 2.0
    epochs: int = 100
    learning_rate: float = 1e-3
    weight_decay: float = 1e-5
    blur_sigma: float = 4.0


class CouplingBlock(nn.Module):
    """Affine coupling on half the channels, then a learned per-channel affine, then a fixed permutation.

    The subnet's last convolution starts at zero, so every block starts as the identity and the
    early steps cannot blow up the log-determinant.
    """

    def __init__(self, channels: int, hidden: int, kernel: int, clamp: float, generator: torch.Generator) -> None:
        super().__init__()
        self.c1 = channels // 2
        c2 = channels - self.c1
        self.clamp = clamp
        last = nn.Conv2d(hidden, 2 * c2, kernel, padding=kernel // 2)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.subnet = nn.Sequential(nn.Conv2d(self.c1, hidden, kernel, padding=kernel // 2), nn.ReLU(), last)
        self.log_scale = nn.Parameter(torch.zeros(channels))
        self.shift = nn.Parameter(torch.zeros(channels))
        self.register_buffer("perm", torch.randperm(channels, generator=generator))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x1, x2 = x[:, : self.c1], x[:, self.c1 :]
        a = self.subnet(x1).float() * 0.1
        c2 = x2.shape[1]
        s = self.clamp * torch.tanh(a[:, :c2])  # soft clamp keeps exp(s) bounded
        y = torch.cat([x1, x2.float() * torch.exp(s) + a[:, c2:]], dim=1)
        y = y * torch.exp(self.log_scale)[None, :, None, None] + self.shift[None, :, None, None]
        log_det = s.sum(dim=(1, 2, 3)) + self.log_scale.sum() * x.shape[2] * x.shape[3]
        return y[:, self.perm], log_det


class Flow(nn.Module):
    """One level's flow: layer norm over (C, h, w) (the paper's, for CNN features), then the blocks."""

    def __init__(self, shape: tuple[int, int, int], cfg: FastFlowConfig, generator: torch.Generator) -> None:
        super().__init__()
        c = shape[0]
        hidden = max(1, int(c * cfg.hidden_ratio))
        self.norm = nn.LayerNorm(list(shape))
        self.blocks = nn.ModuleList(
            CouplingBlock(c, hidden, 3 if cfg.conv3x3_only or i % 2 == 0 else 1, cfg.clamp, generator)
            for i in range(cfg.flow_steps)
        )

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.norm(f)
        log_det = torch.zeros(f.shape[0], device=f.device)
        for block in self.blocks:
            z, ld = block(z)
            log_det = log_det + ld
        return z, log_det


def _nll(z: torch.Tensor, log_det: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood per dimension (constant dropped), averaged over the batch."""
    return ((0.5 * z.float().pow(2).sum(dim=(1, 2, 3)) - log_det) / z[0].numel()).mean()


class FastFlow(TrainableDetector):
    name = "fastflow"
    config_class = FastFlowConfig
    config: FastFlowConfig

    def _build(self, shapes: list[tuple[int, int, int]]) -> None:
        gen = torch.Generator().manual_seed(self.config.seed)
        self.flows_ = nn.ModuleList(Flow(s, self.config, gen) for s in shapes).to(self.device)

    def fit(self, images: ImageBatch) -> Self:
        x = as_image_tensor(images, "good images")
        if min(x.shape[-2:]) < 32:
            raise InputError(f"fastflow needs images of at least 32x32; got {tuple(x.shape[-2:])}")
        gen = self._start_training(x)
        feats = self._frozen_features(x, self.config.layers)
        self._build([tuple(f.shape[1:]) for f in feats])
        opt = torch.optim.Adam(
            self.flows_.parameters(), lr=self.config.learning_rate, weight_decay=self.config.weight_decay
        )
        steps = self.config.epochs * -(-len(x) // self.config.batch_size)

        def loss(step: int) -> torch.Tensor:
            idx = sample_batch(len(x), self.config.batch_size, gen)
            return sum(
                _nll(*flow(f[idx].to(self.device, non_blocking=True)))
                for flow, f in zip(self.flows_, feats, strict=True)
            )

        self._train("train", loss, {"flows": self.flows_}, opt, steps, gen)
        self.image_size_ = tuple(x.shape[-2:])
        return self

    def predict(self, images: ImageBatch) -> DetectorOutput:
        return self._predict_maps(images, self._map_fn)

    def _map_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """Run once the input is validated: eval mode, then the per-batch map."""
        self.flows_.eval()
        names = parse_layers(self.config.layers)

        def anomaly_map(batch: torch.Tensor) -> torch.Tensor:
            feats = self.backbone(batch, names)
            prob = 0.0
            for level, (flow, n) in enumerate(zip(self.flows_, names, strict=True)):
                z, _ = flow(feats[n].float())
                p = torch.exp(-self._nll_terms(level, z).mean(dim=1, keepdim=True))
                prob = prob + F.interpolate(p, size=self.image_size_, mode="bilinear", align_corners=False)
            return gaussian_blur(1.0 - prob[:, 0] / len(names), self.config.blur_sigma)

        return anomaly_map

    def _nll_terms(self, level: int, z: torch.Tensor) -> torch.Tensor:
        """Per-dimension negative log-density of ``z`` under the base distribution, constants dropped:
        N(0, I) here; a detector with a learnt base (AltUB) overrides it, and the map follows."""
        return 0.5 * z.pow(2)

    def _state(self) -> dict[str, torch.Tensor]:
        state = {f"flows.{k}": v for k, v in self.flows_.state_dict().items()}
        for i, flow in enumerate(self.flows_):
            state[f"shape.{i}"] = torch.tensor(flow.norm.normalized_shape, dtype=torch.int64)
        return state

    def _set_state(self, state: dict[str, torch.Tensor]) -> None:
        n = sum(1 for k in state if k.startswith("shape."))
        self._build([tuple(int(v) for v in state[f"shape.{i}"].tolist()) for i in range(n)])
        self.flows_.load_state_dict({k[len("flows.") :]: v for k, v in state.items() if k.startswith("flows.")})
