"""PaDiM (Defard et al., ICPR 2020): a Gaussian per feature-map position, Mahalanobis distance."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import ClassVar, Self

import numpy as np
import torch

from detectors.base import Detector, DetectorConfig, DetectorOutput, ImageBatch, as_image_tensor
from detectors.maps import parse_layers, to_image_maps


@dataclass(frozen=True)
class PadimConfig(DetectorConfig):
    RESULT_NEUTRAL: ClassVar[Mapping[str, str]] = MappingProxyType(
        {
            **DetectorConfig.RESULT_NEUTRAL,
            "batch_size": "each image is embedded on its own and the streaming mean and covariance sums are "
            "exactly independent of the batching; only float32 rounding moves (the first batch's mean is "
            "the shift), amplified by the inverse to ~1e-3 relative, the float32 error every fit has "
            "against a float64 one; measured: maps within 0.02 of ~230 at batch 1, 3, 5 and 16, "
            "below the cache's float16 step (0.125 there)",
        }
    )

    layers: str = "layer1+layer2+layer3"
    n_features: int = 100
    covariance_eps: float = 0.01
    blur_sigma: float = 4.0


class Padim(Detector):
    name = "padim"
    config_class = PadimConfig
    version = 2  # 2: float32 outer products on shifted data
    config: PadimConfig

    def _embed(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, d, h, w) with the fitted random channel subset."""
        feats = self._pooled_features(batch, self.config.layers, avg_kernel=1)
        return feats[:, self.channels_.to(feats.device)]

    def fit(self, images: ImageBatch) -> Self:
        x = as_image_tensor(images, "good images")
        total = sum(self.backbone.channels[n] for n in parse_layers(self.config.layers))
        d = min(self.config.n_features, total)
        gen = torch.Generator().manual_seed(self.config.seed)
        self.channels_ = torch.randperm(total, generator=gen)[:d].sort().values
        # Streaming sums: no need to hold every embedding (PaDiM's reference does). Each batch is
        # centred on the first batch's mean ("shifted data"), so its outer products can run in fast
        # float32 without the cancellation of a raw one-pass covariance; sums add up in float64.
        n, shift, s1, s2 = 0, None, None, None
        for batch in self._batches(x, "fit"):
            e = self._embed(batch).flatten(2).permute(2, 0, 1).float()  # (P, B, d)
            if shift is None:
                shift = e.mean(1, keepdim=True)
            c = e - shift
            part1, part2 = c.sum(1).double(), torch.bmm(c.transpose(1, 2), c).double()
            s1 = part1 if s1 is None else s1 + part1
            s2 = part2 if s2 is None else s2 + part2
            n += e.shape[1]
        offset = s1 / n  # mean - shift
        mean = shift[:, 0].double() + offset
        cov = (s2 - n * offset[:, :, None] * offset[:, None, :]) / max(n - 1, 1)
        cov += self.config.covariance_eps * torch.eye(d, dtype=cov.dtype, device=cov.device)
        self.mean_ = mean.float().cpu()
        self.inv_covariance_ = torch.linalg.inv(cov).float().cpu().contiguous()  # row-major, as loaded
        self.image_size_ = tuple(x.shape[-2:])
        return self

    def predict(self, images: ImageBatch) -> DetectorOutput:
        x = as_image_tensor(images)
        self._check_fitted(x)
        mean, inv = self.mean_.to(self.device), self.inv_covariance_.to(self.device)
        maps, scores = [], []
        for batch in self._batches(x, "predict"):
            e = self._embed(batch)
            b, _, h, w = e.shape
            delta = e.flatten(2).permute(2, 0, 1) - mean[:, None, :]  # (P, B, d)
            dist = (torch.bmm(delta, inv) * delta).sum(-1).clamp_min_(0).sqrt_()  # (P, B)
            m = to_image_maps(dist.T.reshape(b, h, w), self.image_size_, self.config.blur_sigma)
            maps.append(m.cpu())
            scores.append(m.flatten(1).max(1).values.cpu())
        return DetectorOutput(torch.cat(maps).numpy().astype(np.float32), torch.cat(scores).numpy().astype(np.float32))

    def _state(self) -> dict[str, torch.Tensor]:
        return {"channels_": self.channels_, "mean_": self.mean_, "inv_covariance_": self.inv_covariance_}

    def _set_state(self, state: dict[str, torch.Tensor]) -> None:
        self.channels_, self.mean_, self.inv_covariance_ = state["channels_"], state["mean_"], state["inv_covariance_"]
