"""CNN feature dictionary (Napoletano, Piccoli & Schettini, Sensors 2018; a baseline of the MVTec AD
paper): pretrained features of good-image patches, L1-normalised, reduced by PCA to 95% of their
variance, summarised by a k-means dictionary; a patch far from every word is anomalous.

The paper crops subregions, up-samples each into a ResNet-18 and keeps its average-pooled output; here
the frozen backbone runs once per image and each position of its locally averaged ``layer2+layer3``
features (PatchCore's patch features, Lite0's by default) stands for a subregion, so every patch of an
image costs one pass. Dictionary size: 100 words, one of the paper's sizes (10, 100, 500, 1000; larger
was better there, and slower to search). The k-means fit uses at most ``max_patches`` training patches,
drawn with the seed. Map: the distance of each patch to its nearest word, upsampled and blurred (sigma
4, as segad's other detectors); score = its maximum.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import ClassVar, Self

import numpy as np
import torch
import torch.nn.functional as F

from detectors.base import Detector, DetectorConfig, DetectorOutput, ImageBatch, as_image_tensor
from detectors.errors import InputError
from detectors.maps import parse_layers, to_image_maps
from detectors.neighbours import nearest


@dataclass(frozen=True)
class FeatureDictionaryConfig(DetectorConfig):
    RESULT_NEUTRAL: ClassVar[Mapping[str, str]] = MappingProxyType(
        {
            **DetectorConfig.RESULT_NEUTRAL,
            "batch_size": "each image is embedded on its own by the frozen, eval-mode backbone, so batching only "
            "chunks the work (features move by float32 rounding at most)",
        }
    )

    layers: str = "layer2+layer3"
    avg_kernel: int = 3
    n_words: int = 100
    explained_variance: float = 0.95
    max_patches: int = 100_000
    blur_sigma: float = 4.0


class FeatureDictionary(Detector):
    name = "feature_dictionary"
    config_class = FeatureDictionaryConfig
    config: FeatureDictionaryConfig

    def _patches(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, h, w, C) L1-normalised patch features."""
        feats = self._pooled_features(batch, self.config.layers, self.config.avg_kernel).permute(0, 2, 3, 1)
        return F.normalize(feats.float(), p=1, dim=-1)

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.pca_mean_.to(x.device)) @ self.pca_components_.to(x.device).T

    def fit(self, images: ImageBatch) -> Self:
        from sklearn.cluster import KMeans
        from sklearn.decomposition import PCA

        cfg = self.config
        if cfg.n_words < 1 or not 0.0 < cfg.explained_variance <= 1.0:
            raise InputError(
                f"feature_dictionary: n_words must be >= 1 and explained_variance in (0, 1]; "
                f"got {cfg.n_words} and {cfg.explained_variance}"
            )
        x = as_image_tensor(images, "good images")
        parse_layers(cfg.layers)
        patches = torch.cat([self._patches(b).flatten(0, 2).cpu() for b in self._batches(x, "fit")])
        if len(patches) < cfg.n_words:
            raise InputError(
                f"feature_dictionary: {len(patches)} training patches cannot make {cfg.n_words} words; "
                "give more or larger good images, or lower n_words"
            )
        rng = np.random.default_rng(cfg.seed)
        if len(patches) > cfg.max_patches:
            patches = patches[torch.from_numpy(np.sort(rng.choice(len(patches), cfg.max_patches, replace=False)))]
        data = patches.double().numpy()
        pca = PCA(n_components=cfg.explained_variance if cfg.explained_variance < 1 else None, svd_solver="full")
        reduced = pca.fit_transform(data)
        km = KMeans(n_clusters=cfg.n_words, n_init=1, random_state=cfg.seed).fit(reduced)
        self.pca_mean_ = torch.from_numpy(pca.mean_).float()
        self.pca_components_ = torch.from_numpy(pca.components_).float().contiguous()
        self.words_ = torch.from_numpy(km.cluster_centers_).float().contiguous()
        self.image_size_ = tuple(x.shape[-2:])
        return self

    def predict(self, images: ImageBatch) -> DetectorOutput:
        x = as_image_tensor(images)
        self._check_fitted(x)
        words = self.words_.to(self.device)
        words_sq = (words**2).sum(1)
        maps, scores = [], []
        for batch in self._batches(x, "predict"):
            p = self._patches(batch)
            b, h, w, c = p.shape
            dist, _ = nearest(self._project(p.reshape(-1, c)), words, words_sq, 8192)
            m = to_image_maps(dist.view(b, h, w), self.image_size_, self.config.blur_sigma)
            maps.append(m.cpu())
            scores.append(m.flatten(1).max(1).values.cpu())
        return DetectorOutput(torch.cat(maps).numpy().astype(np.float32), torch.cat(scores).numpy().astype(np.float32))

    def _state(self) -> dict[str, torch.Tensor]:
        return {"pca_mean_": self.pca_mean_, "pca_components_": self.pca_components_, "words_": self.words_}

    def _set_state(self, state: dict[str, torch.Tensor]) -> None:
        self.pca_mean_, self.pca_components_ = state["pca_mean_"], state["pca_components_"]
        self.words_ = state["words_"]
