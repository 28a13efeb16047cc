"""DRA (Ding, Pang & Shen, CVPR 2022): disentangled abnormalities, a supervised few-shot baseline for SegAD.

DevNet learns one score from the few labelled defects and so fits what it has seen. DRA splits the
abnormality into heads on one fine-tuned backbone's feature map, each trained with DevNet's
deviation loss on its own labels (as in ``Choubo/DRA``'s training code):

- **seen**: a 1x1 conv patch scorer, top-k mean; normal images against the labelled defects;
- **pseudo**: the same on normal images against pseudo defects made from them on the fly (a patch of
  the image pasted elsewhere: the reference's CutMix);
- **residual** (composite): the mean feature map of a few reference normal images minus the image's,
  through a 3x3 conv + batch norm + ReLU, then a top-k patch scorer; normal against every defect. It
  sees what differs from normal images, seen or not;
- **normal** (holistic): global pooling and a two-layer MLP; trained to score normal images *high*.

Image score = seen + pseudo + residual - normal, each head averaged over ``n_scales`` image scales.
Defaults are the reference's: 30 epochs x 20 steps of 48 (half normal, half labelled defects), Adam lr
2e-4 with weight decay 1e-5, StepLR x0.1 every 10 epochs, gradient norm clipped at 1, top 10% of
patches, two scales, five reference images. Half the normal draws become pseudo defects
(``pseudo_share``): the reference's share could not be checked offline.

Where this differs from the reference, and why:

* backbone: the project's offline backbones (EfficientNet-Lite0 by default) instead of ResNet-18.
* reference images: the reference draws a fresh batch of reference normals for every training batch
  *and every test batch*, so a test score depends on the batch it lands in. Here training does the
  same, but scoring compares against the mean feature map of ``n_reference`` normal images fixed at the
  end of the fit and saved with the model: a score is a function of its image alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from detectors.backbones import Backbone
from detectors.base import ImageBatch
from segad.supervised.base import DeviationConfig, FrozenBatchNorm, SupervisedModel, deviation_loss, draw, topk_mean

HEADS = ("normal", "seen", "pseudo", "residual")
NORMAL, SEEN, PSEUDO = 0, 1, 2  # training labels


@dataclass(frozen=True)
class DRAConfig(DeviationConfig):
    """DRA's options and the reference's defaults."""

    epochs: int = 30
    n_scales: int = 2
    n_reference: int = 5  # normal images whose mean feature map the residual head compares against
    pseudo_share: float = 0.5  # share of the normal draws made into pseudo defects

    def checks(self) -> list[tuple[bool, str, str]]:
        return [
            *super().checks(),
            (self.n_reference >= 1, "n_reference", "be at least 1"),
            (0.0 <= self.pseudo_share < 1.0, "pseudo_share", "be in [0, 1)"),
        ]


def paste_patch(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Pseudo defects: in each image, a patch of 2-15% of the area (aspect 0.3-3.3) copied elsewhere."""
    out = x.clone()
    H, W = x.shape[-2:]

    def uniform(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=generator))

    for i in range(len(x)):
        area = uniform(0.02, 0.15) * H * W
        aspect = float(np.exp(uniform(np.log(0.3), np.log(1 / 0.3))))
        h = int(np.clip(np.sqrt(area * aspect), 1, H - 1))
        w = int(np.clip(np.sqrt(area / aspect), 1, W - 1))
        sy, sx, dy, dx = (int(uniform(0, n - s + 1)) for n, s in ((H, h), (W, w), (H, h), (W, w)))
        out[i, :, dy : dy + h, dx : dx + w] = x[i, :, sy : sy + h, sx : sx + w]
    return out


class DRAModule(FrozenBatchNorm):
    """The backbone and DRA's four heads; ``forward`` gives (B, 4) head scores, averaged over scales."""

    def __init__(
        self, backbone: Backbone, layer: str, topk_ratio: float, n_scales: int, freeze_bn: bool, size: tuple[int, int]
    ) -> None:
        super().__init__()
        c = backbone.channels[layer]
        self.backbone, self.layer, self.topk_ratio, self.n_scales, self.freeze_bn = (
            backbone, layer, topk_ratio, n_scales, freeze_bn,
        )  # fmt: skip
        self.normal = nn.Sequential(nn.Linear(c, 256), nn.ReLU(), nn.Linear(256, 1))
        self.seen = nn.Conv2d(c, 1, kernel_size=1)
        self.pseudo = nn.Conv2d(c, 1, kernel_size=1)
        self.residual = nn.Sequential(
            nn.Conv2d(c, c, kernel_size=3, padding=1), nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, 1, kernel_size=1)
        )
        # The reference normals' mean feature map per scale, fixed at the end of a fit (saved with the weights).
        with torch.no_grad():
            was = backbone.training
            backbone.eval()
            for s in range(n_scales):
                probe = self._features(torch.zeros(1, 3, size[0] >> s, size[1] >> s))
                self.register_buffer(f"reference_{s}", torch.zeros_like(probe))
            backbone.train(was)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x, (self.layer,))[self.layer]

    def _scale(self, x: torch.Tensor, s: int) -> torch.Tensor:
        h, w = x.shape[-2:]
        return x if s == 0 else F.interpolate(x, size=(h >> s, w >> s), mode="bilinear", antialias=True)

    def _maps(self, feats: torch.Tensor, reference: torch.Tensor) -> dict[str, torch.Tensor]:
        """The three abnormal heads' (B, h, w) patch scores and the normal head's (B,) score."""
        return {
            "normal": self.normal(feats.mean(dim=(2, 3)))[:, 0].abs(),
            "seen": self.seen(feats)[:, 0].abs(),
            "pseudo": self.pseudo(feats)[:, 0].abs(),
            "residual": self.residual(reference - feats)[:, 0].abs(),
        }

    def _heads(self, feats: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        maps = self._maps(feats, reference)
        return torch.stack([maps["normal"], *(topk_mean(maps[h], self.topk_ratio) for h in HEADS[1:])], dim=1)  # (B, 4)

    def heads(self, x: torch.Tensor, references: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 4) head scores. ``references``: reference normal images (training); else the saved map."""
        per_scale = []
        for s in range(self.n_scales):
            if references is None:
                ref = getattr(self, f"reference_{s}")
                feats = self._features(self._scale(x, s))
            else:  # one pass for both, as the reference code does, so batch norm sees them together
                both = self._features(self._scale(torch.cat([references, x]), s))
                ref, feats = both[: len(references)].mean(dim=0, keepdim=True), both[len(references) :]
            per_scale.append(self._heads(feats, ref))
        return torch.stack(per_scale).mean(dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Image score: the abnormal heads minus the normal head."""
        h = self.heads(x)
        return h[:, 1:].sum(dim=1) - h[:, 0]

    def patch_scores(self, x: torch.Tensor) -> torch.Tensor:
        """(B, h, w): the three abnormal heads' patch scores summed, first scale."""
        maps = self._maps(self._features(x), self.reference_0)
        return maps["seen"] + maps["pseudo"] + maps["residual"]

    @torch.no_grad()
    def set_reference(self, images: torch.Tensor) -> None:
        was = self.training
        self.eval()
        for s in range(self.n_scales):
            getattr(self, f"reference_{s}").copy_(self._features(self._scale(images, s)).mean(dim=0, keepdim=True))
        self.train(was)


def dra_loss(
    heads: torch.Tensor, labels: torch.Tensor, *, margin: float, n_ref: int, generator: torch.Generator
) -> torch.Tensor:
    """The reference's sum of four deviation losses, each head on its own rows and targets."""
    labels = labels.to(heads.device)
    seen_rows, pseudo_rows = labels != PSEUDO, labels != SEEN

    def dev(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return deviation_loss(scores, target.float(), margin=margin, n_ref=n_ref, generator=generator)

    return (
        dev(heads[:, 0], labels == NORMAL)  # normal images pushed high by the normal head
        + dev(heads[seen_rows, 1], labels[seen_rows] == SEEN)
        + dev(heads[pseudo_rows, 2], labels[pseudo_rows] == PSEUDO)
        + dev(heads[:, 3], labels != NORMAL)
    )


class DRA(SupervisedModel):
    """DRA in the scikit-learn habit: ``fit(normal, defects)``, then ``decision_function(images)``."""

    name: ClassVar[str] = "dra"
    config_class: ClassVar[type[DRAConfig]] = DRAConfig

    def _network(self, backbone: Backbone) -> DRAModule:
        cfg = self.config
        if self.image_size_ is None:
            raise RuntimeError("DRA builds for a known image size")
        return DRAModule(backbone, cfg.layer, cfg.topk_ratio, cfg.n_scales, cfg.freeze_bn, self.image_size_)

    def fit(self, normal: ImageBatch, defects: ImageBatch) -> DRA:
        """Fine-tune on (N, 3, H, W) ImageNet-normalised normal images and labelled defects of one size."""
        cfg = self.config
        x_norm, x_def = self._training_images(normal, defects)
        self.image_size_ = (int(x_norm.shape[-2]), int(x_norm.shape[-1]))
        model = self._build()
        gen = torch.Generator().manual_seed(cfg.seed)
        n_def = cfg.batch_size // 2
        n_norm = cfg.batch_size - n_def
        device = self.device

        def loss_fn(step: int) -> torch.Tensor:
            refs = x_norm[draw(len(x_norm), cfg.n_reference, gen)]
            xn = x_norm[draw(len(x_norm), n_norm, gen)]
            pseudo = torch.rand(n_norm, generator=gen) < cfg.pseudo_share
            if pseudo.any():
                xn[pseudo] = paste_patch(xn[pseudo], gen)
            x = torch.cat([xn, x_def[draw(len(x_def), n_def, gen)]])
            y = torch.cat([torch.where(pseudo, PSEUDO, NORMAL), torch.full((n_def,), SEEN)])
            heads = model.heads(x.to(device, non_blocking=True), refs.to(device, non_blocking=True))
            return dra_loss(heads, y, margin=cfg.margin, n_ref=cfg.n_ref, generator=gen)

        self._train(model, loss_fn, gen, self.image_size_)
        fixed = draw(len(x_norm), cfg.n_reference, torch.Generator().manual_seed(cfg.seed))
        model.set_reference(x_norm[fixed].to(device))
        return self


__all__ = ["DRA", "DRAConfig", "DRAModule", "dra_loss", "paste_patch"]
