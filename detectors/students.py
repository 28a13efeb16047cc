"""Uninformed Students (Bergmann, Fauser, Sattlegger & Steger, CVPR 2020): an ensemble of student
networks learns to regress a descriptive teacher's patch descriptors on good images; where the
students miss the teacher (regression error) or disagree with each other (predictive variance), the
patch is anomalous.

Fit runs one phase of ``detectors.training``'s loop (seeded, checkpoints, loss history): M = 3
randomly initialised fully-convolutional students per patch size p, each trained with its own MSE to
the teacher's standardised 128-d descriptors (the loss logged is their sum), Adam lr 1e-4, weight
decay 1e-5, 100 epochs, as the paper. Then, on held-out good images (``validation_share``), the mean
and std over all cells of the regression error ``e = ||mean_students - teacher||^2`` and of the
predictive variance ``v`` (the students' variance, averaged over the descriptor's channels) fix the
paper's normalisation; a cell scores ``(e - mean_e) / std_e + (v - mean_v) / std_v``, averaged over
patch sizes (the paper's multi-scale combination), upsampled bilinearly to the image, blurred (sigma
4) and maxed for the image score.

Differences from the paper, and why:

- The teacher. The paper distils a patch network from a pretrained ResNet-18 on ImageNet patches
  (with metric-learning and compactness losses). ImageNet is not available here, so the teacher is
  the frozen pretrained backbone itself (EfficientNet-Lite0 by default): its ``teacher_layers``,
  upsampled bilinearly to the student grid, concatenated, standardised per channel over the training
  images, mapped to ``out_channels`` (128, the paper's d) by a fixed seeded semi-orthogonal projection
  when the channel count differs, and standardised per channel again, so the students regress unit-
  variance descriptors as in the paper. Its receptive field is the backbone's, not exactly p: the
  default ``layer2`` (stride 8, a theoretical field of 67 px, effectively less) is Lite0's level
  nearest a 33-px patch (``layer3``'s reaches about 340 px), and its 40 channels become 128 of rank 40.
  In CPU test runs on the synthetic set, students found the planted defects after fewer steps with
  a ``layer2`` teacher than with ``layer2+layer3``.
- The students' layers. Each is an unpadded stack of convolutions and 2x2 max pools with LeakyReLU
  (slope 5e-3) and the paper's channel pattern (``width`` 128, then 256, ending in ``out_channels``)
  whose receptive field is exactly p (17, 33 or 65); the kernel sizes are chosen for that, not copied
  from the paper's tables. The paper evaluates every pixel (fast dense feature extraction); here the
  two pools give one descriptor every 4 px (the image is zero-padded so cell i is centred on pixel
  4i + 1), and the map is upsampled, as EfficientAD (this paper's descendant) does.
- The students train on the same random batches of ``batch_size`` images (the paper does not give
  its batch size); they differ by their random initialisation.
- The normalisation's good images are ``validation_share`` (10%) of the fit images, held out of
  training, since segad gets no separate validation set.
- ``receptive_fields`` defaults to the single scale p = 33; ``"17+33+65"`` gives the paper's
  multi-scale ensemble (3x the training cost), all scales regressing the same teacher.

Defaults aim at a GPU. On a CPU, pass fewer ``epochs`` and a smaller ``width`` for quick experiments.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Self

import torch
import torch.nn.functional as F
from torch import nn

from detectors.base import DetectorOutput, ImageBatch, as_image_tensor
from detectors.errors import InputError
from detectors.maps import ChannelStats, parse_layers, semi_orthogonal, to_image_maps
from detectors.training import TrainableConfig, TrainableDetector, load_modules, modules_state, sample_batch

STRIDE = 4  # two 2x2 max pools: one descriptor every 4 px
SLOPE = 5e-3  # the paper's LeakyReLU slope

# Per receptive field p: (kernel, channels as a multiple of ``width`` or 0 for ``out_channels``) of each
# convolution, "pool" for a 2x2 max pool. Receptive field 1 + sum (k - 1) * jump = p exactly.
PLANS: dict[int, tuple] = {
    17: ((4, 1), "pool", (2, 2), "pool", (2, 2), (2, 0)),
    33: ((4, 1), "pool", (4, 2), "pool", (3, 2), (4, 0)),
    65: ((4, 1), "pool", (6, 1), "pool", (5, 2), (5, 2), (5, 0)),
}


def parse_receptive_fields(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(p) for p in text.replace(",", "+").split("+") if p.strip())
    except ValueError:
        sizes = ()
    if not sizes or any(p not in PLANS for p in sizes) or len(set(sizes)) != len(sizes):
        raise InputError(
            f"receptive_fields={text!r}: give distinct patch sizes from {sorted(PLANS)} joined by '+', e.g. '17+33+65'"
        )
    return sizes


@dataclass(frozen=True)
class StudentsConfig(TrainableConfig):
    receptive_fields: str = "33"  # the paper's patch size p; "17+33+65" for its multi-scale ensemble
    students: int = 3  # M, per patch size
    out_channels: int = 128  # the descriptor's d
    width: int = 128  # the students' first convolution's channels (then 2x); 128 is the paper's
    teacher_layers: str = "layer2"  # the backbone level nearest a p = 33 patch (see above)
    epochs: int = 100
    batch_size: int = 8
    learning_rate: float = 1e-4
    weight_decay: float = 1e-5
    validation_share: float = 0.1
    blur_sigma: float = 4.0

    def __post_init__(self) -> None:
        parse_receptive_fields(self.receptive_fields)
        for name in ("students", "out_channels", "width", "epochs"):
            low = 2 if name == "students" else 1
            if getattr(self, name) < low:
                raise InputError(f"{name} must be at least {low}, got {getattr(self, name)}")
        if not 0.0 < self.validation_share < 1.0:
            raise InputError(f"validation_share must be in (0, 1), got {self.validation_share}")


# --- networks -------------------------------------------------------------------------------------


class Student(nn.Module):
    """An unpadded patch network with receptive field ``p``, stride 4; pads the image itself so its
    grid is ``ceil(side / 4)`` with cell i centred on pixel 4i + 1."""

    def __init__(self, p: int, width: int, out_channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for i, step in enumerate(PLANS[p]):
            if step == "pool":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            k, mult = step
            cout = mult * width if mult else out_channels
            layers.append(nn.Conv2d(cin, cout, k))
            if i < len(PLANS[p]) - 1:  # no activation after the descriptor
                layers.append(nn.LeakyReLU(SLOPE))
            cin = cout
        self.net = nn.Sequential(*layers)
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        gh, gw = grid(h), grid(w)
        before = (self.p - 1) // 2 - 1
        after_h = STRIDE * (gh - 1) + self.p - h - before
        after_w = STRIDE * (gw - 1) + self.p - w - before
        return self.net(F.pad(x, (before, after_w, before, after_h)))[..., :gh, :gw]


def grid(side: int) -> int:
    return -(-side // STRIDE)


def _upsampled(levels: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """Backbone levels bilinearly resized to the student grid of an image ``size``, concatenated."""
    g = (grid(size[0]), grid(size[1]))
    return torch.cat([F.interpolate(f, size=g, mode="bilinear", align_corners=False) for f in levels], 1)


# --- the detector ---------------------------------------------------------------------------------


class Students(TrainableDetector):
    name = "students"
    version = 1
    config_class = StudentsConfig
    config: StudentsConfig

    def _build(self) -> None:
        cfg = self.config
        self.students_ = nn.ModuleList(
            nn.ModuleList(Student(p, cfg.width, cfg.out_channels) for _ in range(cfg.students))
            for p in parse_receptive_fields(cfg.receptive_fields)
        ).to(self.device)

    def _check_input(self, x: torch.Tensor) -> None:
        if len(x) < 2:
            raise InputError(
                "students needs at least two good images: some to train on and at least one held out "
                f"(validation_share={self.config.validation_share}) to normalise the scores"
            )
        self._require_size(x, parse_layers(self.config.teacher_layers), why=" (teacher_layers)")

    # --- teacher ------------------------------------------------------------------------------------
    def _teacher_levels(self, batch: torch.Tensor) -> list[torch.Tensor]:
        with torch.inference_mode():
            feats = self.backbone(batch, parse_layers(self.config.teacher_layers))
            return [f.float() for f in feats.values()]

    def _descriptors(self, levels: list[torch.Tensor], size: tuple[int, int], final: bool = True) -> torch.Tensor:
        """Backbone levels -> (B, out_channels, gh, gw) teacher descriptors (``final``: standardised)."""
        with torch.no_grad():
            t = (_upsampled(levels, size) - self.feature_mean_.view(1, -1, 1, 1)) / self.feature_std_.view(1, -1, 1, 1)
            t = torch.einsum("oc,bchw->bohw", self.projection_, t)
            if final:
                t = (t - self.descriptor_mean_.view(1, -1, 1, 1)) / self.descriptor_std_.view(1, -1, 1, 1)
        return t

    # --- maps ---------------------------------------------------------------------------------------
    def _error_and_variance(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(S, B, gh, gw) regression error and predictive variance, one per patch size."""
        t = self._descriptors(self._teacher_levels(batch), tuple(batch.shape[-2:]))
        errors, variances = [], []
        with torch.no_grad():
            for ensemble in self.students_:
                preds = torch.stack([s(batch).float() for s in ensemble])  # (M, B, d, gh, gw)
                mean = preds.mean(0)
                errors.append(((mean - t) ** 2).sum(1))
                variances.append(((preds - mean) ** 2).mean(0).mean(1))
        return torch.stack(errors), torch.stack(variances)

    # --- fit ----------------------------------------------------------------------------------------
    def fit(self, images: ImageBatch) -> Self:
        x = as_image_tensor(images, "good images")
        self._check_input(x)
        cfg = self.config
        gen = self._start_training(x)
        self._build()
        size = tuple(x.shape[-2:])

        n_val = min(len(x) - 1, max(1, round(cfg.validation_share * len(x))))
        perm = torch.randperm(len(x), generator=gen)
        x_train, x_val = x[perm[n_val:].sort().values], x[perm[:n_val].sort().values]

        # The teacher's levels of every training image, once; then the two standardisations.
        levels = self._frozen_features(x_train, cfg.teacher_layers)
        chunks = [[f[i : i + cfg.batch_size] for f in levels] for i in range(0, len(x_train), cfg.batch_size)]
        stats = ChannelStats()
        for chunk in chunks:
            stats.add(_upsampled(chunk, size))
        mean, std = stats.result()
        self.feature_mean_, self.feature_std_ = mean.to(self.device), std.to(self.device)
        self.projection_ = semi_orthogonal(mean.numel(), cfg.out_channels, cfg.seed).to(self.device)
        stats = ChannelStats()
        for chunk in chunks:
            stats.add(self._descriptors([f.to(self.device) for f in chunk], size, final=False))
        mean, std = stats.result()
        self.descriptor_mean_, self.descriptor_std_ = mean.to(self.device), std.to(self.device)

        students = [s for ensemble in self.students_ for s in ensemble]

        def loss(step: int) -> torch.Tensor:
            idx = sample_batch(len(x_train), cfg.batch_size, gen)
            batch = x_train[idx].to(self.device)
            target = self._descriptors([f[idx].to(self.device) for f in levels], size)
            return sum(((s(batch).float() - target) ** 2).mean() for s in students)

        opt = torch.optim.Adam(self.students_.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        steps = cfg.epochs * math.ceil(len(x_train) / cfg.batch_size)
        self._train("students", loss, {"students": self.students_}, opt, steps, gen)

        # The paper's normalisation of both terms, over all cells of the held-out good images.
        self.students_.eval()
        parts = [self._error_and_variance(b) for b in self._batches(x_val, "validation")]
        e, v = torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 1)
        # (S, 4): mean and std of the error, then of the variance, per patch size
        self.score_stats_ = torch.stack(
            [e.flatten(1).mean(1), e.flatten(1).std(1), v.flatten(1).mean(1), v.flatten(1).std(1)], 1
        ).cpu()
        self.image_size_ = size
        return self

    # --- predict ------------------------------------------------------------------------------------
    def predict(self, images: ImageBatch) -> DetectorOutput:
        return self._predict_maps(images, self._map_fn)

    def _map_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        self.students_.eval()
        e_mean, e_std, v_mean, v_std = self.score_stats_.to(self.device).T[..., None, None, None]

        def anomaly_map(batch: torch.Tensor) -> torch.Tensor:
            e, v = self._error_and_variance(batch)
            score = (e - e_mean) / e_std.clamp_min(1e-12) + (v - v_mean) / v_std.clamp_min(1e-12)
            return to_image_maps(score.mean(0), self.image_size_, self.config.blur_sigma)

        return anomaly_map

    # --- state --------------------------------------------------------------------------------------
    _TENSORS = ("feature_mean_", "feature_std_", "projection_", "descriptor_mean_", "descriptor_std_", "score_stats_")

    def _state(self) -> dict[str, torch.Tensor]:
        state = modules_state({"students": self.students_})
        state.update({name: getattr(self, name) for name in self._TENSORS})
        return state

    def _set_state(self, state: dict[str, torch.Tensor]) -> None:
        self._build()
        load_modules({"students": self.students_}, state)
        for name in self._TENSORS:
            setattr(self, name, state[name].to(self.device) if name != "score_stats_" else state[name])


__all__ = ["PLANS", "Student", "Students", "StudentsConfig", "parse_receptive_fields"]
