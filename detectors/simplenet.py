"""SimpleNet (Liu et al., CVPR 2023): a discriminator learns to tell adapted good-image patch features
from the same features plus Gaussian noise; a patch it does not call "good" is anomalous.

Four parts, as in the paper and its code (DonaldRR/SimpleNet, ``simplenet.py``, ``common.py``, ``run.sh``):

* Feature extractor (frozen): each backbone level is cut into 3x3 patches (zero padded), the coarser
  level's patches are upsampled bilinearly to the finer grid, each level's flattened patch vector is
  adaptive-average-pooled to ``pretrain_dim`` values and the stacked levels pooled again to ``embed_dim``
  (the repo's ``Preprocessing`` + ``Aggregator``, 1536 and 1536). The pooling is fixed, so the backbone
  levels of the fit images are computed once and the embedding is rebuilt per batch from them.
* Feature adaptor: one linear layer ``embed_dim -> embed_dim`` (xavier-normal init), AdamW lr 1e-4 and
  AdamW's default weight decay 0.01 (the repo: ``pre_proj=1``, ``AdamW(lr * 0.1)`` with ``lr=1e-3``).
* Anomalous features: adapted features + Gaussian noise (the repo: one noise scale, ``mix_noise=1``).
* Discriminator: linear -> batch norm -> LeakyReLU(0.2) -> linear to one score (no bias), hidden 1024
  (``dsc_hidden``), Adam lr 2e-4 with (coupled, L2) weight decay 1e-5. Loss: truncated L1 with
  ``th = 0.5``, ``mean(relu(th - D(good))) + mean(relu(th + D(noisy)))``; good and noisy features go
  through the discriminator as one batch, so its batch norm sees both, as in the repo.

Map: ``-D(adaptor(feature))`` per patch, upsampled bilinearly, blurred with sigma 4; score = its max.

An epoch is one pass over the training images at ``batch_size`` (8, the repo's): the repo trains
``meta_epochs=40`` x ``gan_epochs=4`` = 160 passes (the paper's "160 epochs"); here ``epochs=160``
random batches of ceil(n / batch_size) per epoch. Deviations from the paper and why:

* Backbone: EfficientNet-Lite0 ``layer2+layer3`` (strides 8 and 16, 40 + 112 channels) instead of
  WRN50's layer2+layer3: WRN50's weights cannot be downloaded here. Their 3x3 patch vectors (360 and
  1008 values) are *shorter* than 1536, so the first pooling spreads rather than averages them; the
  adaptor and noise still act on a 1536-d feature, as in the paper.
* Noise scale: the paper's sigma 0.015 is in WRN50's feature units. Lite0's features are about 10x
  larger (per-dimension spread ~6 on the test images), so 0.015 is invisible to the discriminator: it
  collapses to D = 0 (loss stuck at 1.0). The embedding is therefore divided by one fitted scalar, the
  training patches' per-dimension standard deviation averaged over dimensions (``feature_scale_``), and
  ``noise_std`` is in those units, so it means the same on any backbone. WRN50's spread could not be
  measured here (no weights), so the paper's ratio is unknown; 0.1 is a judgement from the test set:
  at 0.03 the discriminator learned nothing in 300 steps (loss 1.0), at 0.1 it reached 0.39 in 900
  steps and at 0.3 0.06 in 300, all finding the planted defects.
* No best-epoch selection: the repo evaluates on the *test* set after every meta-epoch and keeps the
  discriminator with the best test AUROC; a detector here never sees test labels, so the last epoch's
  weights are kept.
* Score = max of the blurred map (the project's convention); the repo takes the max of the unblurred
  patch scores.
* The discriminator's coupled weight decay is applied as the gradient of an L2 penalty whose value is
  taken out of the logged loss, so one AdamW (per-group settings) runs both parts on any torch version.

At the defaults a step (batch 8, 256 px: 8192 patches of 1536 values through a 1536x1536 adaptor and a
1536 -> 1024 discriminator, good and noisy) is some 0.3 TFLOP: fine on a GPU, seconds on a CPU, where
smaller ``embed_dim`` / ``disc_hidden`` and fewer ``epochs`` make it affordable.
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
from detectors.maps import parse_layers, to_image_maps
from detectors.training import TrainableConfig, TrainableDetector, load_modules, modules_state, sample_batch


@dataclass(frozen=True)
class SimpleNetConfig(TrainableConfig):
    layers: str = "layer2+layer3"
    batch_size: int = 8  # the repo's run.sh
    patch_size: int = 3
    pretrain_dim: int = 1536  # each level's patch vector pooled to this many values
    embed_dim: int = 1536  # the stacked levels pooled to this: the adaptor's and discriminator's input
    disc_hidden: int = 1024
    noise_std: float = 0.1  # in units of the training features' spread (see the module docstring)
    margin: float = 0.5  # th of the truncated L1 loss
    epochs: int = 160
    adaptor_lr: float = 1e-4
    adaptor_weight_decay: float = 1e-2  # AdamW's default, as the repo's AdamW
    disc_lr: float = 2e-4
    disc_weight_decay: float = 1e-5  # Adam's coupled L2 decay, as the repo
    blur_sigma: float = 4.0

    def __post_init__(self) -> None:
        if self.patch_size < 1 or self.patch_size % 2 == 0:
            raise InputError(f"simplenet: patch_size must be a positive odd number, got {self.patch_size}")
        for name in ("pretrain_dim", "embed_dim", "disc_hidden", "epochs"):
            if getattr(self, name) < 1:
                raise InputError(f"simplenet: {name} must be at least 1, got {getattr(self, name)}")
        if self.noise_std <= 0:
            raise InputError(f"simplenet: noise_std must be positive, got {self.noise_std}")


def patch_embedding(levels: list[torch.Tensor], patch_size: int, pretrain_dim: int, embed_dim: int) -> torch.Tensor:
    """Backbone levels (B, C_l, h_l, w_l), finest first -> (B, h, w, embed_dim) patch features.

    Each level: k x k neighbourhoods (zero padded) flattened channel-major, bilinearly upsampled to the
    first level's grid, adaptive-average-pooled to ``pretrain_dim``; then the levels side by side pooled
    to ``embed_dim``. A fixed linear map of the features, as the repo's PatchMaker + MeanMapper + Aggregator.
    """
    b, _, h, w = levels[0].shape
    pooled = []
    for f in levels:
        fh, fw = f.shape[-2:]
        p = F.unfold(f.float(), patch_size, padding=patch_size // 2).view(b, -1, fh, fw)
        if (fh, fw) != (h, w):
            p = F.interpolate(p, size=(h, w), mode="bilinear", align_corners=False)
        p = p.permute(0, 2, 3, 1).reshape(b * h * w, 1, -1)
        pooled.append(F.adaptive_avg_pool1d(p, pretrain_dim))
    return F.adaptive_avg_pool1d(torch.cat(pooled, dim=2), embed_dim).view(b, h, w, embed_dim)


def _xavier(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.xavier_normal_(module.weight)


class Discriminator(nn.Sequential):
    """Linear -> BN -> LeakyReLU(0.2) -> linear to one score: high for good features, low for noisy ones."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__(
            nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1, bias=False)
        )
        self.apply(_xavier)


def truncated_l1(good: torch.Tensor, noisy: torch.Tensor, margin: float) -> torch.Tensor:
    """SimpleNet's loss: good scores pushed above ``margin``, noisy ones below ``-margin``; no gradient beyond."""
    return F.relu(margin - good).mean() + F.relu(margin + noisy).mean()


class SimpleNet(TrainableDetector):
    name = "simplenet"
    config_class = SimpleNetConfig
    config: SimpleNetConfig

    def _build(self) -> None:
        cfg = self.config
        torch.manual_seed(cfg.seed)
        self.adaptor_ = nn.Linear(cfg.embed_dim, cfg.embed_dim).to(self.device)
        _xavier(self.adaptor_)
        self.discriminator_ = Discriminator(cfg.embed_dim, cfg.disc_hidden).to(self.device)

    def _embed(self, levels: list[torch.Tensor], scale: torch.Tensor | None = None) -> torch.Tensor:
        """(B, h, w, embed_dim) patch features divided by the fitted spread (``scale`` while fitting)."""
        cfg = self.config
        emb = patch_embedding(levels, cfg.patch_size, cfg.pretrain_dim, cfg.embed_dim)
        return emb / (self.feature_scale_ if scale is None else scale)

    def _feature_scale(self, levels: list[torch.Tensor]) -> torch.Tensor:
        """The training patches' per-dimension standard deviation, averaged over the dimensions.

        Accumulated batch by batch in float64 (the embeddings of a whole training set need not fit in memory).
        """
        cfg = self.config
        total, total_sq, count = 0.0, 0.0, 0
        for s in range(0, len(levels[0]), cfg.batch_size):
            with torch.no_grad():
                e = self._embed([f[s : s + cfg.batch_size] for f in levels], scale=torch.ones(()))
            e = e.reshape(-1, cfg.embed_dim).double()
            total, total_sq, count = total + e.sum(0), total_sq + e.square().sum(0), count + len(e)
        mean = total / count
        var = (total_sq / count - mean.square()).clamp_min(0)
        scale = var.sqrt().mean().float()
        if not scale > 0:
            raise InputError("simplenet: the training images' features do not vary at all; check the images")
        return scale.reshape(())

    def _check_input(self, x: torch.Tensor) -> None:
        self._require_size(x, parse_layers(self.config.layers), why=" (two patches on the coarsest level)")

    def fit(self, images: ImageBatch) -> Self:
        x = as_image_tensor(images, "good images")
        self._check_input(x)
        gen = self._start_training(x)
        self._build()
        cfg = self.config
        levels = self._frozen_features(x, cfg.layers)
        self.feature_scale_ = self._feature_scale(levels).to(self.device)
        disc_params = list(self.discriminator_.parameters())
        adaptor = {
            "params": list(self.adaptor_.parameters()),
            "lr": cfg.adaptor_lr,
            "weight_decay": cfg.adaptor_weight_decay,
        }
        opt = torch.optim.AdamW([adaptor, {"params": disc_params, "lr": cfg.disc_lr, "weight_decay": 0.0}])
        steps = cfg.epochs * -(-len(x) // cfg.batch_size)

        def loss(step: int) -> torch.Tensor:
            idx = sample_batch(len(x), cfg.batch_size, gen)
            with torch.no_grad():
                feats = self._embed([f[idx].to(self.device, non_blocking=True) for f in levels])
            good = self.adaptor_(feats.reshape(-1, cfg.embed_dim))
            noise = torch.randn(good.shape, generator=gen).to(self.device) * cfg.noise_std
            scores = self.discriminator_(torch.cat([good, good + noise])).float()
            main = truncated_l1(scores[: len(good)], scores[len(good) :], cfg.margin)
            # Adam's coupled weight decay on the discriminator: the L2 penalty's gradient is wd * w; its value
            # is subtracted again, so the logged loss stays the paper's.
            penalty = 0.5 * cfg.disc_weight_decay * sum(p.float().square().sum() for p in disc_params)
            return main + penalty - penalty.detach()

        self._train("train", loss, self._modules(), opt, steps, gen)
        self.image_size_ = tuple(x.shape[-2:])
        return self

    def predict(self, images: ImageBatch) -> DetectorOutput:
        return self._predict_maps(images, self._map_fn)

    def _map_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """Run once the input is validated: eval mode, then the per-batch map."""
        self.adaptor_.eval()
        self.discriminator_.eval()
        names = parse_layers(self.config.layers)

        def anomaly_map(batch: torch.Tensor) -> torch.Tensor:
            feats = self.backbone(batch, names)
            emb = self._embed([feats[n] for n in names])
            b, h, w, d = emb.shape
            patch_scores = -self.discriminator_(self.adaptor_(emb.reshape(-1, d))).float().view(b, h, w)
            return to_image_maps(patch_scores, self.image_size_, self.config.blur_sigma)

        return anomaly_map

    def _modules(self) -> dict[str, nn.Module]:
        return {"adaptor": self.adaptor_, "discriminator": self.discriminator_}

    def _state(self) -> dict[str, torch.Tensor]:
        return {**modules_state(self._modules()), "feature_scale_": self.feature_scale_}

    def _set_state(self, state: dict[str, torch.Tensor]) -> None:
        self._build()
        self.feature_scale_ = state.pop("feature_scale_").to(self.device)
        load_modules(self._modules(), state)


__all__ = ["Discriminator", "SimpleNet", "SimpleNetConfig", "patch_embedding", "truncated_l1"]
