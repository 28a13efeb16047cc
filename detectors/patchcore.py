"""PatchCore (Roth et al., CVPR 2022): a coreset memory bank of good patch features, kNN scoring."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import ClassVar, Self

import numpy as np
import torch
import torch.nn.functional as F

from detectors.base import Detector, DetectorConfig, DetectorOutput, ImageBatch, as_image_tensor
from detectors.coreset import greedy_coreset
from detectors.maps import to_image_maps
from detectors.neighbours import nearest


@dataclass(frozen=True)
class PatchCoreConfig(DetectorConfig):
    RESULT_NEUTRAL: ClassVar[Mapping[str, str]] = MappingProxyType(
        {
            **DetectorConfig.RESULT_NEUTRAL,
            "batch_size": "fit and predict embed each image on its own (frozen, eval-mode backbone) and the "
            "coreset runs once on all patches, so batching only chunks the work; measured: maps move by "
            "float32 rounding (3e-6 relative), far below the cache's float16",
            "query_chunk": "the nearest-neighbour search takes this many query patches at a time, each "
            "query's distance computed on its own, so it only bounds memory (maps move by float32 rounding)",
        }
    )

    layers: str = "layer2+layer3"
    avg_kernel: int = 3
    coreset_ratio: float = 0.01
    # The greedy runs on exact distances up to this many feature channels, above it on a Gaussian
    # projection to this many: EfficientNet-Lite0's 152 channels stay exact (128 cost brick 0.7 and grass
    # 0.5 points of image AUROC over 30-200 fits, #14), ResNets' 384 / 1,536 are projected as anomalib
    # projects them (sparse, to about 265 dimensions), so their coreset stays fast.
    projection_dim: int = 256
    num_neighbors: int = 9
    reweight: bool = False
    blur_sigma: float = 4.0
    half_bank: bool = False
    query_chunk: int = 8192


class PatchCore(Detector):
    name = "patchcore"
    config_class = PatchCoreConfig
    config: PatchCoreConfig
    version = 2  # 2: the local average counts the zero padding, as the paper's AvgPool2d(3, 1, 1)

    def _embed(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, h, w, C) patch features."""
        return self._pooled_features(batch, self.config.layers, self.config.avg_kernel).permute(0, 2, 3, 1)

    def fit(self, images: ImageBatch) -> Self:
        x = as_image_tensor(images, "good images")
        t0 = time.perf_counter()
        patches = torch.cat([self._embed(b).flatten(0, 2).cpu() for b in self._batches(x, "fit")])
        t1 = time.perf_counter()
        keep = greedy_coreset(
            patches.to(self.device), self.config.coreset_ratio, self.config.projection_dim, self.config.seed
        )
        bank = patches[keep.cpu()]
        self.fit_seconds_ = {"features": t1 - t0, "coreset": time.perf_counter() - t1}
        self.memory_bank_ = bank.half() if self.config.half_bank else bank
        self.image_size_ = tuple(x.shape[-2:])
        return self

    def _bank(self) -> tuple[torch.Tensor, torch.Tensor]:
        # float16 banks compute in float16 on GPU; CPUs lack fast float16 matmul, so they upcast.
        on_gpu_half = self.memory_bank_.dtype == torch.float16 and self.device.type == "cuda"
        dtype = torch.float16 if on_gpu_half else torch.float32
        bank = self.memory_bank_.to(self.device, dtype)
        return bank, (bank.float() ** 2).sum(1).to(dtype)

    def predict(self, images: ImageBatch) -> DetectorOutput:
        x = as_image_tensor(images)
        self._check_fitted(x)
        bank, bank_sq = self._bank()
        maps, scores = [], []
        for batch in self._batches(x, "predict"):
            emb = self._embed(batch)
            b, h, w, c = emb.shape
            dist, nn_idx = nearest(emb.reshape(-1, c), bank, bank_sq, self.config.query_chunk)
            patch = dist.view(b, h * w)
            score, arg = patch.max(dim=1)
            if self.config.reweight:
                rows = torch.arange(b, device=arg.device)
                query = emb.reshape(b, h * w, c)[rows, arg]
                score = score * self._reweight(query, nn_idx.view(b, -1)[rows, arg], bank)
            maps.append(to_image_maps(patch.view(b, h, w), self.image_size_, self.config.blur_sigma).cpu())
            scores.append(score.cpu())
        return DetectorOutput(torch.cat(maps).numpy().astype(np.float32), torch.cat(scores).numpy().astype(np.float32))

    def _reweight(self, query: torch.Tensor, nearest: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
        """The paper's Eq. 7: damp the max score when its nearest bank patch sits in a dense region."""
        k = min(self.config.num_neighbors, bank.shape[0])
        anchors = bank[nearest].float()
        neigh = torch.cdist(anchors, bank.float()).topk(k, largest=False).indices  # includes the anchor itself
        d = torch.linalg.vector_norm(query[:, None, :].float() - bank[neigh].float(), dim=-1)
        return 1.0 - F.softmax(d, dim=1)[:, 0]

    def _state(self) -> dict[str, torch.Tensor]:
        return {"memory_bank_": self.memory_bank_}

    def _set_state(self, state: dict[str, torch.Tensor]) -> None:
        self.memory_bank_ = state["memory_bank_"]
