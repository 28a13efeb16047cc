"""The fine-tuned classifier: SegAD's supervised baseline (its appendix B), an ImageNet backbone trained
end to end as a binary good/defect classifier on the same few labelled defects.

It is the plainest way to use labelled defects, and the one a newcomer tries first, so SegAD's table
needs it: global average pooling of the backbone's last feature map, one linear unit (the logit is
the score), the focal loss (Lin et al., ICCV 2017; torchvision's ``sigmoid_focal_loss``, alpha 0.25,
gamma 2), SGD with momentum 0.9. SegAD's paper names the loss and the optimiser but no schedule, so
the rest follows DRA's (30 epochs x 20 steps, StepLR x0.1 every 10 epochs, gradient norm clipped at
1), with PyTorch's transfer-learning tutorial's learning rate (0.001) and torchvision's classification
recipe's weight decay (1e-4); batches are balanced like the other baselines' (half normal, half
defects), so the three differ only where the methods do.

``patch_scores`` is the linear unit applied at every position of the feature map (a class
activation map): its mean over positions plus the bias is the logit, so it is the map the score is
made of.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from detectors.backbones import Backbone
from detectors.base import ImageBatch
from segad.supervised.base import FrozenBatchNorm, SupervisedConfig, SupervisedModel, draw


@dataclass(frozen=True)
class ClassifierConfig(SupervisedConfig):
    """The fine-tuned classifier's options and defaults."""

    epochs: int = 30
    lr: float = 0.001
    weight_decay: float = 1e-4
    momentum: float = 0.9
    focal_alpha: float = 0.25  # weight of the defect class; -1 weighs both classes equally
    focal_gamma: float = 2.0  # 0 is plain cross-entropy; higher down-weights the easy examples

    def checks(self) -> list[tuple[bool, str, str]]:
        return [
            *super().checks(),
            (0.0 <= self.momentum < 1.0, "momentum", "be in [0, 1)"),
            (self.focal_alpha == -1 or 0.0 < self.focal_alpha < 1.0, "focal_alpha", "be in (0, 1), or -1 (none)"),
            (self.focal_gamma >= 0, "focal_gamma", "be >= 0"),
        ]


class ClassifierModule(FrozenBatchNorm):
    """Backbone, global average pooling and one linear unit; ``forward`` gives (B,) logits."""

    def __init__(self, backbone: Backbone, layer: str, freeze_bn: bool) -> None:
        super().__init__()
        self.backbone, self.layer, self.freeze_bn = backbone, layer, freeze_bn
        self.fc = nn.Linear(backbone.channels[layer], 1)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x, (self.layer,))[self.layer]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self._features(x).mean(dim=(2, 3)))[:, 0]

    def patch_scores(self, x: torch.Tensor) -> torch.Tensor:
        """(B, h, w): the linear unit at every position (its mean plus the bias is the logit)."""
        return torch.einsum("bchw,c->bhw", self._features(x), self.fc.weight[0])


class FineTunedClassifier(SupervisedModel):
    """The fine-tuned classifier in the scikit-learn habit: ``fit(normal, defects)``, ``decision_function``."""

    name: ClassVar[str] = "classifier"
    row: ClassVar[str] = "fine-tuned classifier"  # "classifier" is SegAD's own classifier's row
    stackable: ClassVar[bool] = False  # one logit per image: its class map is no anomaly map to pool
    config_class: ClassVar[type[ClassifierConfig]] = ClassifierConfig

    def _network(self, backbone: Backbone) -> ClassifierModule:
        return ClassifierModule(backbone, self.config.layer, self.config.freeze_bn)

    def _optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        cfg = self.config
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)

    def fit(self, normal: ImageBatch, defects: ImageBatch) -> FineTunedClassifier:
        """Fine-tune on (N, 3, H, W) ImageNet-normalised normal images and labelled defects of one size."""
        cfg = self.config
        x_norm, x_def = self._training_images(normal, defects)
        model = self._build()
        gen = torch.Generator().manual_seed(cfg.seed)
        n_def = cfg.batch_size // 2

        def loss_fn(step: int) -> torch.Tensor:
            i_norm, i_def = draw(len(x_norm), cfg.batch_size - n_def, gen), draw(len(x_def), n_def, gen)
            x = torch.cat([x_norm[i_norm], x_def[i_def]])
            y = torch.cat([torch.zeros(cfg.batch_size - n_def), torch.ones(n_def)]).to(self.device)
            logits = model(x.to(self.device, non_blocking=True)).float()
            return sigmoid_focal_loss(logits, y, alpha=cfg.focal_alpha, gamma=cfg.focal_gamma, reduction="mean")

        return self._train(model, loss_fn, gen, x_norm.shape[-2:])


__all__ = ["ClassifierConfig", "ClassifierModule", "FineTunedClassifier"]
