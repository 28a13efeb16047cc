"""AST (Rudolph, Wehrbein, Rosenhahn & Wandt, WACV 2023, "Asymmetric Student Teacher Networks for
Industrial Anomaly Detection"; code ``marco-rudolph/AST``): a normalising-flow teacher and a
conventional convolutional student; where the student fails to predict the teacher's output, the
image is anomalous.

Fit runs two phases of ``detectors.training``'s loop (seeded, checkpoints):

1. ``teacher``: a conditional normalising flow on the frozen backbone's features, trained by its
   negative log-likelihood (per position: 0.5 ||z||^2 - log|det J|, averaged). Each of its coupling
   blocks is a fixed seeded channel permutation, then a GLOW coupling (both halves transformed in
   turn) whose two subnets (conv, ReLU, conv, times a learned gain starting at 0, replicate padding)
   read their half plus a 2-D sine-cosine position encoding; scales are soft-clamped,
   ``clamp * 0.636 * atan(s / clamp)``.
2. ``student``: a conv net (3x3 conv, LeakyReLU, residual blocks of two 3x3 conv + batch norm +
   LeakyReLU, 3x3 conv) reads the same features plus the position encoding and regresses the frozen
   teacher's z by the mean squared error. The teacher's z of the training images is computed once.

Map: the mean over channels of (z_teacher - z_student)^2 per position, upsampled bilinearly to the
image and blurred (sigma 4). Image score: the mean of the map (``image_score="mean"``, the reference
``eval.py``'s "mean over maps") or its maximum (``"max"``).

Defaults (``config.py`` of the reference): 4 coupling blocks with kernels 3, 3, 3, 5, clamp 1.9,
teacher hidden channels 64, position encoding of 32 channels; student 1,024 hidden channels and 4
residual blocks; Adam lr 2e-4, eps 1e-8, weight decay 1e-5 for both (``train.py``,
``train_student.py``); batch 8; 72 epochs each (``meta_epochs`` 3 x ``sub_epochs`` 24).

Deviations, and why:

- Features: the paper's EfficientNet-B5 block 35 (304 channels, stride 32 at 768 px) is not
  shipped; Lite0 ``layer3`` (112 channels, stride 16) is the nearest level, and stride 16 keeps a
  16x16 grid at segad's 256 px (stride 32 would leave 8x8, the paper has 24x24). Several levels
  (``layers="layer2+layer3"``) are upsampled to the finest and concatenated.
- RGB only: the paper's depth input (MVTec 3D-AD) and its foreground masks are not used.
- Bilinear upsampling (the reference: bicubic) and a Gaussian blur of sigma 4 (the reference: none),
  as every segad detector's map; ``blur_sigma=0`` turns the blur off.
- The reference keeps the last epoch, as here; it evaluates on the test set while training, which a
  fit on good images cannot.
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
from detectors.maps import gaussian_blur, parse_layers, pooled_features
from detectors.pfm import position_encoding
from detectors.training import TrainableConfig, TrainableDetector, sample_batch

IMAGE_SCORES = ("mean", "max")


@dataclass(frozen=True)
class ASTConfig(TrainableConfig):
    layers: str = "layer3"
    batch_size: int = 8
    coupling_blocks: int = 4
    clamp: float = 1.9
    teacher_hidden: int = 64
    pos_enc_dim: int = 32
    student_hidden: int = 1024
    student_blocks: int = 4
    teacher_epochs: int = 72
    student_epochs: int = 72
    learning_rate: float = 2e-4
    weight_decay: float = 1e-5
    blur_sigma: float = 4.0
    image_score: str = "mean"


class Subnet(nn.Module):
    """conv - ReLU - conv, times a gain that starts at 0 (so each coupling starts as the identity)."""

    def __init__(self, cin: int, cout: int, hidden: int, kernel: int) -> None:
        super().__init__()
        pad = kernel // 2
        self.conv1 = nn.Conv2d(cin, hidden, kernel, padding=pad, padding_mode="replicate")
        self.conv2 = nn.Conv2d(hidden, cout, kernel, padding=pad, padding_mode="replicate")
        self.gain = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(x))) * self.gain


class CondCoupling(nn.Module):
    """A fixed channel permutation, then a GLOW coupling conditioned on the position encoding."""

    def __init__(
        self, channels: int, cond: int, hidden: int, kernel: int, clamp: float, generator: torch.Generator
    ) -> None:
        super().__init__()
        self.register_buffer("perm", torch.randperm(channels, generator=generator))
        self.c1 = channels // 2
        c2 = channels - self.c1
        self.clamp = clamp
        self.s1 = Subnet(self.c1 + cond, 2 * c2, hidden, kernel)  # reads y1, transforms x2
        self.s2 = Subnet(c2 + cond, 2 * self.c1, hidden, kernel)  # reads x2, transforms x1

    def _log_scale(self, s: torch.Tensor) -> torch.Tensor:
        return self.clamp * 0.636 * torch.atan(s / self.clamp)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, h, w) -> z and the per-position log-determinant (B, h, w)."""
        x = x[:, self.perm]
        x1, x2 = x[:, : self.c1], x[:, self.c1 :]
        s2, t2 = self.s2(torch.cat([x2, cond], 1)).chunk(2, dim=1)
        ls2 = self._log_scale(s2)
        y1 = torch.exp(ls2) * x1 + t2
        s1, t1 = self.s1(torch.cat([y1, cond], 1)).chunk(2, dim=1)
        ls1 = self._log_scale(s1)
        y2 = torch.exp(ls1) * x2 + t1
        y = torch.cat([y1, y2], 1).clamp(-1e6, 1e6)
        return y, ls1.sum(1) + ls2.sum(1)


class Teacher(nn.Module):
    def __init__(self, channels: int, cfg: ASTConfig, generator: torch.Generator) -> None:
        super().__init__()
        n = cfg.coupling_blocks
        self.blocks = nn.ModuleList(
            CondCoupling(channels, cfg.pos_enc_dim, cfg.teacher_hidden, 5 if k == n - 1 else 3, cfg.clamp, generator)
            for k in range(n)
        )

    def forward(self, f: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z, log_det = f, torch.zeros(f.shape[0], *f.shape[2:], device=f.device)
        for block in self.blocks:
            z, ld = block(z, cond)
            log_det = log_det + ld
        return z, log_det


class ResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
            nn.LeakyReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
            nn.LeakyReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Student(nn.Module):
    def __init__(self, channels: int, cfg: ASTConfig) -> None:
        super().__init__()
        h = cfg.student_hidden
        self.net = nn.Sequential(
            nn.Conv2d(channels + cfg.pos_enc_dim, h, 3, padding=1),
            nn.LeakyReLU(),
            *(ResBlock(h) for _ in range(cfg.student_blocks)),
            nn.Conv2d(h, channels, 3, padding=1),
        )

    def forward(self, f: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([f, cond], 1))


def _nll(z: torch.Tensor, log_det: torch.Tensor) -> torch.Tensor:
    """The reference's teacher loss: 0.5 ||z||^2 - log|det J| per position, averaged."""
    return (0.5 * z.float().pow(2).sum(1) - log_det).mean()


class AST(TrainableDetector):
    name = "ast"
    config_class = ASTConfig
    config: ASTConfig

    def _check_config(self) -> None:
        cfg = self.config
        if cfg.image_score not in IMAGE_SCORES:
            raise InputError(f"ast: image_score must be one of {IMAGE_SCORES}, got {cfg.image_score!r}")
        if cfg.pos_enc_dim < 4 or cfg.pos_enc_dim % 4:
            raise InputError(f"ast: pos_enc_dim must be a positive multiple of 4, got {cfg.pos_enc_dim}")
        if cfg.coupling_blocks < 1:
            raise InputError(f"ast: coupling_blocks must be at least 1, got {cfg.coupling_blocks}")

    def _build(self, channels: int) -> None:
        gen = torch.Generator().manual_seed(self.config.seed)
        self.teacher_ = Teacher(channels, self.config, gen).to(self.device)
        self.student_ = Student(channels, self.config).to(self.device)

    def _cond(self, n: int, h: int, w: int) -> torch.Tensor:
        return position_encoding(self.config.pos_enc_dim, h, w).to(self.device)[None].expand(n, -1, -1, -1)

    def _features(self, batch: torch.Tensor) -> torch.Tensor:
        names = parse_layers(self.config.layers)
        return pooled_features(self.backbone(batch, names), names, 1).float()

    def _adam(self, module: nn.Module) -> torch.optim.Adam:
        cfg = self.config
        return torch.optim.Adam(module.parameters(), lr=cfg.learning_rate, eps=1e-8, weight_decay=cfg.weight_decay)

    def fit(self, images: ImageBatch) -> Self:
        cfg = self.config
        self._check_config()
        x = as_image_tensor(images, "good images")
        if min(x.shape[-2:]) < 32:
            raise InputError(f"ast needs images of at least 32x32; got {tuple(x.shape[-2:])}")
        gen = self._start_training(x)
        names = parse_layers(cfg.layers)
        levels = self._frozen_features(x, cfg.layers)
        feats = pooled_features(dict(zip(names, levels, strict=True)), names, 1)
        n, c, h, w = feats.shape
        self._build(c)
        steps_per_epoch = -(-n // cfg.batch_size)

        def teacher_loss(step: int) -> torch.Tensor:
            f = feats[sample_batch(n, cfg.batch_size, gen)].to(self.device, non_blocking=True)
            return _nll(*self.teacher_(f, self._cond(len(f), h, w)))

        opt = self._adam(self.teacher_)
        self._train("teacher", teacher_loss, {"teacher": self.teacher_}, opt, cfg.teacher_epochs * steps_per_epoch, gen)

        with torch.inference_mode():
            targets = torch.cat(
                [
                    self.teacher_(f.to(self.device), self._cond(len(f), h, w))[0].float().cpu()
                    for f in feats.split(cfg.batch_size)
                ]
            )

        def student_loss(step: int) -> torch.Tensor:
            idx = sample_batch(n, cfg.batch_size, gen)
            f = feats[idx].to(self.device, non_blocking=True)
            z_s = self.student_(f, self._cond(len(f), h, w))
            return (z_s.float() - targets[idx].to(self.device)).pow(2).mean()

        opt = self._adam(self.student_)
        self._train("student", student_loss, {"student": self.student_}, opt, cfg.student_epochs * steps_per_epoch, gen)
        self.image_size_ = tuple(x.shape[-2:])
        return self

    def predict(self, images: ImageBatch) -> DetectorOutput:
        return self._predict_maps(images, self._map_fn)

    def _map_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        self._check_config()
        self.teacher_.eval()
        self.student_.eval()

        def anomaly_map(batch: torch.Tensor) -> torch.Tensor:
            f = self._features(batch)
            cond = self._cond(*f.shape[:1], *f.shape[2:])
            z_t, _ = self.teacher_(f, cond)
            d = (z_t.float() - self.student_(f, cond).float()).pow(2).mean(1, keepdim=True)
            up = F.interpolate(d, size=self.image_size_, mode="bilinear", align_corners=False)[:, 0]
            return gaussian_blur(up, self.config.blur_sigma)

        return anomaly_map

    def _image_scores(self, maps: torch.Tensor) -> torch.Tensor:
        if self.config.image_score == "mean":
            return maps.flatten(1).mean(1)
        return maps.flatten(1).max(1).values

    def _state(self) -> dict[str, torch.Tensor]:
        state = {f"teacher.{k}": v for k, v in self.teacher_.state_dict().items()}
        state.update({f"student.{k}": v for k, v in self.student_.state_dict().items()})
        return state

    def _set_state(self, state: dict[str, torch.Tensor]) -> None:
        channels = state["student.net.0.weight"].shape[1] - self.config.pos_enc_dim
        self._build(channels)
        for name, module in (("teacher", self.teacher_), ("student", self.student_)):
            prefix = f"{name}."
            module.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
            module.eval()
