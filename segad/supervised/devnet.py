"""DevNet (Pang et al., KDD 2019), image version: a supervised few-shot baseline for SegAD to beat.

DevNet learns an anomaly *score* end to end from many normal images and a few labelled defects.
The image version (Choubo/deviation-network-image, the code DRA's paper and its successors report
DevNet from) fine-tunes an ImageNet CNN, scores every position of its last feature map with a 1x1
convolution, and takes the mean of the top 10% of those patch scores (in absolute value, as the
reference does) as the image score: a multiple-instance reading, where a small defect only has to
light up a few patches. The deviation loss pulls normal scores to the mean of a N(0, 1) reference
and pushes defects at least ``margin`` reference standard deviations above it.

Defaults follow the reference code: 50 epochs x 20 steps, balanced batches of 48 (half normal,
half defects, defects repeated when there are fewer than half a batch), Adam lr 2e-4 with L2
weight decay 1e-5, gradient norm clipped at 1.0, StepLR x0.1 after every 10 epochs (stepped
here per optimiser step, 10 x 20 steps).
Where this differs from the reference, and why:

* backbone: the project's offline backbones (EfficientNet-Lite0 by default, ``layer4``) instead of
  ResNet-18, so nothing is downloaded; ``backbone="resnet18"`` is the reference's network.
* ``n_scales=1``: the reference code can also score the image downsampled by 2 and average the
  two image scores; DRA's code and DevNet-derived code default to ``n_scales=2`` (DevNet's own
  default could not be checked offline); set ``n_scales=2`` for that. With one scale the image
  score is exactly the top-k mean of ``patch_scores``, the map a later stage can pool.
* ``freeze_bn=False`` trains batch norm as the reference does. EfficientNet-Lite0's batch norm
  keeps its running statistics with momentum 0.01 (a TensorFlow port), so they trail the training
  batches by about 100 steps: fine over 1000 steps, but a short fit scores test images with
  statistics it never trained with. ``freeze_bn=True`` keeps ImageNet's statistics (the affine
  weights still train), so test-time scores are the scores the loss shaped; the tests use it.
* no augmentation: the reference's training transforms could not be confirmed offline.
* clipping runs as an optimiser pre-step hook, since ``train_phase`` owns the step.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from detectors.atomic import atomic_write
from detectors.backbones import BACKBONES, LAYERS, STRIDES, Backbone, check_backbone
from detectors.base import DetectorConfig, ImageBatch, as_image_tensor
from detectors.device import resolve_device
from detectors.errors import InputError
from detectors.training import PhaseReport, autocast, sample_batch, train_phase

FORMAT = "segad.devnet"
FORMAT_VERSION = 1


class NotFittedError(InputError, RuntimeError):
    """Scoring or saving a DevNet that was neither fitted nor loaded."""


@dataclass(frozen=True)
class DevNetConfig(DetectorConfig):
    """The detectors' config conventions (flat params, string coercion from a CLI or MLflow, the
    result-neutral fields a later cache key leaves out), with DevNet's options and defaults."""

    batch_size: int = 48  # training: half normal, half defects; scoring: images per forward pass
    progress: bool = False
    layer: str = "layer4"  # the scored feature map; "layer3" gives a map twice as fine
    topk_ratio: float = 0.1  # image score = mean of this share of the patch scores (at least one)
    margin: float = 5.0  # defects are pushed at least this many reference std devs above the mean
    n_ref: int = 5000  # reference scores drawn from N(0, 1) per step
    n_scales: int = 1  # 2: also score the image at half size and average the two, as DRA's code
    epochs: int = 50
    steps_per_epoch: int = 20
    lr: float = 2e-4
    weight_decay: float = 1e-5
    lr_step_epochs: int = 10  # StepLR period in epochs; 0 keeps the learning rate constant
    lr_gamma: float = 0.1
    grad_clip: float = 1.0  # max gradient norm before each step; 0 turns clipping off
    freeze_bn: bool = False  # True: batch norm keeps its ImageNet statistics while the weights train

    def __post_init__(self) -> None:
        checks = [
            (0.0 < self.topk_ratio <= 1.0, "topk_ratio", "be in (0, 1]; 0.1 scores the top 10% of patches"),
            (self.margin > 0, "margin", "be positive (the reference uses 5)"),
            (self.n_ref >= 2, "n_ref", "be at least 2 (a standard deviation needs two draws)"),
            (self.n_scales >= 1, "n_scales", "be at least 1"),
            (self.epochs >= 1, "epochs", "be at least 1"),
            (self.steps_per_epoch >= 1, "steps_per_epoch", "be at least 1"),
            (self.batch_size >= 2, "batch_size", "be at least 2 (one normal image and one defect per batch)"),
            (self.lr > 0, "lr", "be positive"),
            (self.weight_decay >= 0, "weight_decay", "be >= 0"),
            (self.lr_step_epochs >= 0, "lr_step_epochs", "be >= 0 (0: no decay)"),
            (0.0 < self.lr_gamma <= 1.0, "lr_gamma", "be in (0, 1]"),
            (self.grad_clip >= 0, "grad_clip", "be >= 0 (0: no clipping)"),
            (self.layer in LAYERS, "layer", f"be one of {', '.join(LAYERS)}"),
        ]
        for ok, name, rule in checks:
            if not ok:
                raise InputError(f"DevNetConfig.{name} must {rule}, got {getattr(self, name)!r}")


def deviation_loss(
    scores: torch.Tensor,
    labels: torch.Tensor,
    ref: torch.Tensor | None = None,
    *,
    margin: float = 5.0,
    n_ref: int = 5000,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """DevNet's loss: normals' deviation from a N(0, 1) reference pulled to 0, defects' pushed past ``margin``.

    ``dev = (score - mean(ref)) / std(ref)``; loss = mean of ``|dev|`` over normals (label 0) and
    ``max(0, margin - dev)`` over defects (label 1). ``ref`` defaults to ``n_ref`` draws from
    ``generator``, so a seeded fit draws the same references every run.
    """
    scores = scores.float().reshape(-1)
    labels = labels.to(device=scores.device, dtype=scores.dtype).reshape(-1)
    if ref is None:
        ref = torch.randn(n_ref, generator=generator)
    ref = ref.to(device=scores.device, dtype=scores.dtype)
    dev = (scores - ref.mean()) / ref.std()
    inlier = dev.abs()
    outlier = (margin - dev).clamp(min=0.0)
    return ((1.0 - labels) * inlier + labels * outlier).mean()


def topk_mean(maps: torch.Tensor, ratio: float) -> torch.Tensor:
    """(B, h, w) -> (B,): the mean of the largest ``ratio`` share of each map's values (at least one)."""
    flat = maps.flatten(1)
    k = max(int(flat.shape[1] * ratio), 1)  # int(): the reference truncates
    return flat.topk(k, dim=1).values.mean(dim=1)


class DevNetModule(nn.Module):
    """Backbone + 1x1 conv patch scorer; ``forward`` gives image scores, ``patch_scores`` the map."""

    def __init__(self, backbone: Backbone, layer: str, topk_ratio: float, n_scales: int, freeze_bn: bool) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Conv2d(backbone.channels[layer], 1, kernel_size=1)
        self.layer = layer
        self.topk_ratio = topk_ratio
        self.n_scales = n_scales
        self.freeze_bn = freeze_bn

    def train(self, mode: bool = True) -> Self:
        """Train mode, except batch norm when ``freeze_bn``: it then normalises as at test time."""
        super().train(mode)
        if mode and self.freeze_bn:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    def patch_scores(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) ImageNet-normalised -> (B, h, w) absolute patch scores of ``layer``'s map."""
        # The input is already ImageNet-normalised; the backbone's ``prepare`` only sets the memory layout.
        feats = self.backbone(x, (self.layer,))[self.layer]
        return self.head(feats)[:, 0].abs()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        per_scale = []
        for s in range(self.n_scales):
            xs = x if s == 0 else F.interpolate(x, size=(h >> s, w >> s), mode="bilinear", antialias=True)
            per_scale.append(topk_mean(self.patch_scores(xs), self.topk_ratio))
        return torch.stack(per_scale, dim=1).mean(dim=1)


def _draw(n: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """``k`` indices into ``n`` items: distinct when ``n >= k``, else every item about equally often."""
    if n >= k:
        return sample_batch(n, k, generator)
    rounds = math.ceil(k / n)
    return torch.cat([torch.randperm(n, generator=generator) for _ in range(rounds)])[:k]


def _images(images: ImageBatch | None, what: str, empty_hint: str) -> torch.Tensor:
    """``as_image_tensor``'s checks, with an empty or missing batch explained for this argument."""
    if images is None:
        raise InputError(f"{what}: got None; {empty_hint}")
    shape = (len(images),) if isinstance(images, list | tuple) else tuple(np.shape(images))
    if shape[0:1] == (0,) and (len(shape) == 1 or shape[1:2] == (3,)):
        raise InputError(f"{what}: the batch is empty; {empty_hint}")
    return as_image_tensor(images, what)


class DevNet:
    """DevNet in the scikit-learn habit: ``fit(normal, defects)``, then ``decision_function(images)``.

    Higher scores mean more anomalous. Fitted state ends in ``_``: ``model_`` (the network),
    ``losses_`` (the loss curve), ``report_`` (the training ``PhaseReport``), ``image_size_``.
    """

    name: ClassVar[str] = "devnet"
    config_class: ClassVar[type[DevNetConfig]] = DevNetConfig

    def __init__(self, config: DevNetConfig | None = None, **overrides: Any) -> None:
        config = config or DevNetConfig()
        if not isinstance(config, DevNetConfig):
            raise TypeError(f"DevNet takes a DevNetConfig, got {type(config).__name__}")
        self.config = DevNetConfig.from_params({**config.to_params(), **overrides})  # unknown options fail here
        check_backbone(self.config.backbone)  # an unknown name or missing weights fail before any work
        self.model_: DevNetModule | None = None
        self.image_size_: tuple[int, int] | None = None
        self.losses_: list[float] = []
        self.report_: PhaseReport | None = None

    @property
    def device(self) -> torch.device:
        return resolve_device(self.config.device)

    def is_fitted(self) -> bool:
        return self.model_ is not None

    def _build(self) -> DevNetModule:
        cfg = self.config
        with torch.random.fork_rng(devices=[]):  # a seeded head init that leaves the caller's RNG alone
            torch.manual_seed(cfg.seed)
            backbone = BACKBONES[cfg.backbone]()  # ImageNet weights, not frozen: DevNet fine-tunes it
            model = DevNetModule(backbone, cfg.layer, cfg.topk_ratio, cfg.n_scales, cfg.freeze_bn)
        return model.to(self.device)

    def _check_size(self, size: tuple[int, int], what: str) -> None:
        smallest = STRIDES[self.config.layer] << (self.config.n_scales - 1)
        if min(size) < smallest:
            raise InputError(
                f"{what} are {size[0]}x{size[1]} px; {self.config.layer} with n_scales={self.config.n_scales} "
                f"needs sides of at least {smallest} px: use larger images or a shallower layer"
            )

    def fit(self, normal: ImageBatch, defects: ImageBatch) -> Self:
        """Fine-tune on (N, 3, H, W) ImageNet-normalised normal images and labelled defects of one size."""
        cfg = self.config
        device = self.device
        x_norm = _images(normal, "normal", "DevNet needs normal (good) training images")
        x_def = _images(defects, "defects", "DevNet needs at least one labelled defect image")
        size = tuple(int(v) for v in x_norm.shape[-2:])
        if tuple(x_def.shape[-2:]) != size:
            raise InputError(
                f"normal images are {size[0]}x{size[1]} px but defects are "
                f"{x_def.shape[-2]}x{x_def.shape[-1]} px; resize both to one size"
            )
        self._check_size(size, "normal images")

        model = self._build()
        gen = torch.Generator().manual_seed(cfg.seed)
        n_def = cfg.batch_size // 2
        n_norm = cfg.batch_size - n_def

        def loss_fn(step: int) -> torch.Tensor:
            i_norm = _draw(len(x_norm), n_norm, gen)
            i_def = _draw(len(x_def), n_def, gen)
            x = torch.cat([x_norm[i_norm], x_def[i_def]]).to(device, non_blocking=True)
            y = torch.cat([torch.zeros(len(i_norm)), torch.ones(len(i_def))])
            return deviation_loss(model(x), y, margin=cfg.margin, n_ref=cfg.n_ref, generator=gen)

        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        if cfg.grad_clip:

            def clip(*_: Any) -> None:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)

            opt.register_step_pre_hook(clip)
        sched = None
        if cfg.lr_step_epochs:
            sched = torch.optim.lr_scheduler.StepLR(opt, cfg.lr_step_epochs * cfg.steps_per_epoch, cfg.lr_gamma)
        losses, report = train_phase(
            "devnet",
            loss_fn,
            {"devnet": model},
            opt,
            cfg.epochs * cfg.steps_per_epoch,
            device,
            gen,
            scheduler=sched,
            progress=cfg.progress,
        )
        self.model_, self.losses_, self.report_, self.image_size_ = model.eval(), losses, report, size
        return self

    def _score(self, images: ImageBatch, fn_name: str) -> np.ndarray:
        if self.model_ is None or self.image_size_ is None:
            raise NotFittedError("DevNet is not fitted: call fit(normal, defects) or DevNet.load(path) first")
        x = _images(images, "images", "pass at least one image to score")
        if tuple(x.shape[-2:]) != self.image_size_:
            raise InputError(
                f"images are {x.shape[-2]}x{x.shape[-1]} px but DevNet was fitted on "
                f"{self.image_size_[0]}x{self.image_size_[1]} px; resize them to the fitted size"
            )
        model, device = self.model_.eval(), self.device
        fn = getattr(model, fn_name)
        out = []
        with torch.inference_mode(), autocast(device):
            for s in range(0, len(x), self.config.batch_size):
                out.append(fn(x[s : s + self.config.batch_size].to(device)).float().cpu())
        return torch.cat(out).numpy().astype(np.float32, copy=False)

    def decision_function(self, images: ImageBatch) -> np.ndarray:
        """(N,) float32 image scores, higher = more anomalous; pure (eval mode, no gradients)."""
        return self._score(images, "forward")

    def patch_scores(self, images: ImageBatch) -> np.ndarray:
        """(N, h, w) float32 patch scores of the first scale, at the scored layer's resolution."""
        return self._score(images, "patch_scores")

    # --- persistence ---------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Weights and metadata (config, image size, loss curve, format version) as one safetensors file."""
        if self.model_ is None or self.image_size_ is None:
            raise NotFittedError("DevNet is not fitted; nothing to save")
        state = {k: v.detach().cpu().contiguous() for k, v in self.model_.state_dict().items()}
        meta = {
            "format": FORMAT,
            "format_version": str(FORMAT_VERSION),
            "config": json.dumps(self.config.to_params()),
            "image_size": json.dumps(list(self.image_size_)),
            "losses": json.dumps(self.losses_),
            "report": json.dumps(self.report_.to_dict() if self.report_ else None),
        }
        return atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=meta))

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> DevNet:
        """A fitted DevNet from ``save``'s file, on ``device``; any unreadable file is an ``InputError``."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"DevNet file {path} does not exist")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
            state = load_file(str(path))
        except Exception as e:  # safetensors raises its own error types for truncated or foreign files
            raise InputError(f"{path} is not a readable DevNet file (truncated or corrupt?): {e}") from e
        if meta.get("format") != FORMAT:
            raise InputError(f"{path} is not a DevNet file (format {meta.get('format')!r}, expected {FORMAT!r})")
        if meta.get("format_version") != str(FORMAT_VERSION):
            raise InputError(
                f"{path} has DevNet format version {meta.get('format_version')}; this segad reads {FORMAT_VERSION}"
            )
        try:
            config = DevNetConfig.from_params({**json.loads(meta["config"]), "device": device})
            size = json.loads(meta["image_size"])
            report = json.loads(meta.get("report", "null"))
            losses = json.loads(meta.get("losses", "[]"))
        except (KeyError, TypeError, json.JSONDecodeError) as e:
            raise InputError(f"{path}: the DevNet metadata is damaged ({e}); save the model again") from e
        det = cls(config)
        model = det._build()
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise InputError(f"{path}: the weights do not fit a {config.backbone} DevNet ({e})") from e
        det.model_ = model.eval()
        det.image_size_ = (int(size[0]), int(size[1]))
        det.losses_ = losses
        det.report_ = PhaseReport(**report) if report else None
        return det


__all__ = ["DevNet", "DevNetConfig", "DevNetModule", "NotFittedError", "deviation_loss", "topk_mean"]
