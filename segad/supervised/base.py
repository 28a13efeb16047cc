"""What every supervised few-shot baseline shares: its config, the deviation loss, balanced batches, the
optimiser schedule of DevNet's and DRA's code, scoring, and safetensors persistence.

A baseline is a ``SupervisedModel``: ``fit(normal, defects)`` returns self, ``decision_function(images)``
scores (N, 3, H, W) ImageNet-normalised images (higher = more anomalous), ``patch_scores`` gives the
map a later stage can pool; fitted state ends in ``_``. A subclass builds its network (``_build``) and
says what one training step costs (``fit``); the rest is here, so the methods differ only where the
papers do.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from detectors.atomic import atomic_write
from detectors.backbones import BACKBONES, LAYERS, STRIDES, Backbone, check_backbone
from detectors.base import DetectorConfig, ImageBatch, as_image_tensor
from detectors.device import resolve_device
from detectors.errors import InputError
from detectors.training import PhaseReport, autocast, sample_batch, train_phase


class NotFittedError(InputError, RuntimeError):
    """Scoring or saving a baseline that was neither fitted nor loaded."""


@dataclass(frozen=True)
class SupervisedConfig(DetectorConfig):
    """The detectors' config conventions (flat params, string coercion from a CLI or MLflow), with the
    training options every baseline shares, at DevNet's defaults."""

    batch_size: int = 48  # training: half normal, half defects; scoring: images per forward pass
    progress: bool = False
    layer: str = "layer4"  # the scored feature map; "layer3" gives a map twice as fine
    n_scales: int = 1  # 2: also score the image at half size and average the two, as DRA's code
    epochs: int = 50
    steps_per_epoch: int = 20
    lr: float = 2e-4
    weight_decay: float = 1e-5
    lr_step_epochs: int = 10  # StepLR period in epochs; 0 keeps the learning rate constant
    lr_gamma: float = 0.1
    grad_clip: float = 1.0  # max gradient norm before each step; 0 turns clipping off
    # True: every batch norm normalises with its running statistics while the weights train: the backbone's
    # ImageNet ones, and for a head's new batch norm (DRA's residual head) its initial 0 / 1, a learned affine map.
    freeze_bn: bool = False

    def checks(self) -> list[tuple[bool, str, str]]:
        """(holds, option, rule) for every option; a subclass adds its own."""
        return [
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

    def __post_init__(self) -> None:
        for ok, name, rule in self.checks():
            if not ok:
                raise InputError(f"{type(self).__name__}.{name} must {rule}, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class DeviationConfig(SupervisedConfig):
    """The options of the deviation-loss methods (DevNet, DRA): top-k patch pooling and the loss's margin."""

    topk_ratio: float = 0.1  # image score = mean of this share of the patch scores (at least one)
    margin: float = 5.0  # defects are pushed at least this many reference std devs above the mean
    n_ref: int = 5000  # reference scores drawn from N(0, 1) per step

    def checks(self) -> list[tuple[bool, str, str]]:
        return [
            *super().checks(),
            (0.0 < self.topk_ratio <= 1.0, "topk_ratio", "be in (0, 1]; 0.1 scores the top 10% of patches"),
            (self.margin > 0, "margin", "be positive (the reference uses 5)"),
            (self.n_ref >= 2, "n_ref", "be at least 2 (a standard deviation needs two draws)"),
        ]


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


class FrozenBatchNorm(nn.Module):
    """``train()`` that leaves batch norm in eval mode when ``freeze_bn``: it then normalises as at test time."""

    freeze_bn: bool = False

    def train(self, mode: bool = True) -> Self:
        super().train(mode)
        if mode and self.freeze_bn:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self


def draw(n: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """``k`` indices into ``n`` items: distinct when ``n >= k``, else every item about equally often."""
    if n >= k:
        return sample_batch(n, k, generator)
    rounds = math.ceil(k / n)
    return torch.cat([torch.randperm(n, generator=generator) for _ in range(rounds)])[:k]


def image_tensor(images: ImageBatch | None, what: str, empty_hint: str) -> torch.Tensor:
    """``as_image_tensor``'s checks, with an empty or missing batch explained for this argument."""
    if images is None:
        raise InputError(f"{what}: got None; {empty_hint}")
    shape = (len(images),) if isinstance(images, list | tuple) else tuple(np.shape(images))
    if shape[0:1] == (0,) and (len(shape) == 1 or shape[1:2] == (3,)):
        raise InputError(f"{what}: the batch is empty; {empty_hint}")
    return as_image_tensor(images, what)


class SupervisedModel:
    """The scikit-learn habit for a network that learns from normal images and labelled defects.

    Fitted state: ``model_`` (the network), ``losses_`` (the loss curve), ``report_`` (the training
    ``PhaseReport``), ``image_size_``.
    """

    name: ClassVar[str]
    row: ClassVar[str]  # its row in segad.train's table and its MLflow run: the name, unless a subclass says
    # Its patch scores are an anomaly map SegAD can pool (``--detectors devnet``): the method scores patches.
    stackable: ClassVar[bool] = True
    config_class: ClassVar[type[SupervisedConfig]]
    FORMAT_VERSION: ClassVar[int] = 1

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "row" not in cls.__dict__:
            cls.row = cls.name

    def __init__(self, config: SupervisedConfig | None = None, **overrides: Any) -> None:
        cls = self.config_class
        config = config or cls()
        if not isinstance(config, cls):
            raise TypeError(f"{type(self).__name__} takes a {cls.__name__}, got {type(config).__name__}")
        self.config = cls.from_params({**config.to_params(), **overrides})  # unknown options fail here
        check_backbone(self.config.backbone)  # an unknown name or missing weights fail before any work
        self.model_: nn.Module | None = None
        self.image_size_: tuple[int, int] | None = None
        self.losses_: list[float] = []
        self.report_: PhaseReport | None = None

    @classmethod
    def format(cls) -> str:
        return f"segad.{cls.name}"

    @property
    def device(self) -> torch.device:
        return resolve_device(self.config.device)

    def is_fitted(self) -> bool:
        return self.model_ is not None

    def _network(self, backbone: Backbone) -> nn.Module:
        """The method's network around a fresh ImageNet backbone (fine-tuned, not frozen)."""
        raise NotImplementedError

    def _build(self) -> nn.Module:
        with torch.random.fork_rng(devices=[]):  # seeded heads that leave the caller's RNG alone
            torch.manual_seed(self.config.seed)
            model = self._network(BACKBONES[self.config.backbone]())
        return model.to(self.device)

    def _check_size(self, size: tuple[int, int], what: str) -> None:
        smallest = STRIDES[self.config.layer] << (self.config.n_scales - 1)
        if min(size) < smallest:
            raise InputError(
                f"{what} are {size[0]}x{size[1]} px; {self.config.layer} with n_scales={self.config.n_scales} "
                f"needs sides of at least {smallest} px: use larger images or a shallower layer"
            )

    def _training_images(self, normal: ImageBatch, defects: ImageBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Both batches as tensors of one size the network can score, or an ``InputError`` that says why not."""
        x_norm = image_tensor(normal, "normal", f"{type(self).__name__} needs normal (good) training images")
        x_def = image_tensor(defects, "defects", f"{type(self).__name__} needs at least one labelled defect image")
        size = tuple(int(v) for v in x_norm.shape[-2:])
        if tuple(x_def.shape[-2:]) != size:
            raise InputError(
                f"normal images are {size[0]}x{size[1]} px but defects are "
                f"{x_def.shape[-2]}x{x_def.shape[-1]} px; resize both to one size"
            )
        self._check_size(size, "normal images")
        return x_norm, x_def

    def _optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        """DevNet's and DRA's: Adam with L2 weight decay."""
        return torch.optim.Adam(params, lr=self.config.lr, weight_decay=self.config.weight_decay)

    def _train(self, model: nn.Module, loss_fn: Any, generator: torch.Generator, size: tuple[int, ...]) -> Self:
        """The references' schedule: the optimiser, gradient norm clipping, StepLR per epoch."""
        cfg = self.config
        params = [p for p in model.parameters() if p.requires_grad]
        opt = self._optimizer(params)
        if cfg.grad_clip:

            def clip(*_: Any) -> None:  # a pre-step hook, since train_phase owns the step
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)

            opt.register_step_pre_hook(clip)
        sched = None
        if cfg.lr_step_epochs:
            sched = torch.optim.lr_scheduler.StepLR(opt, cfg.lr_step_epochs * cfg.steps_per_epoch, cfg.lr_gamma)
        steps = cfg.epochs * cfg.steps_per_epoch
        losses, report = train_phase(
            self.name, loss_fn, {self.name: model}, opt, steps, self.device, generator, scheduler=sched,
            progress=cfg.progress,
        )  # fmt: skip
        self.model_, self.losses_, self.report_ = model.eval(), losses, report
        self.image_size_ = (int(size[0]), int(size[1]))
        return self

    def _score(self, images: ImageBatch, fn_name: str) -> np.ndarray:
        if self.model_ is None or self.image_size_ is None:
            raise NotFittedError(
                f"{type(self).__name__} is not fitted: call fit(normal, defects) or {type(self).__name__}.load(path)"
            )
        x = image_tensor(images, "images", "pass at least one image to score")
        if tuple(x.shape[-2:]) != self.image_size_:
            raise InputError(
                f"images are {x.shape[-2]}x{x.shape[-1]} px but {type(self).__name__} was fitted on "
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
            raise NotFittedError(f"{type(self).__name__} is not fitted; nothing to save")
        state = {k: v.detach().cpu().contiguous() for k, v in self.model_.state_dict().items()}
        meta = {
            "format": self.format(),
            "format_version": str(self.FORMAT_VERSION),
            "config": json.dumps(self.config.to_params()),
            "image_size": json.dumps(list(self.image_size_)),
            "losses": json.dumps(self.losses_),
            "report": json.dumps(self.report_.to_dict() if self.report_ else None),
        }
        return atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=meta))

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> Self:
        """A fitted model from ``save``'s file, on ``device``; any unreadable file is an ``InputError``."""
        what = cls.__name__
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{what} file {path} does not exist")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
            state = load_file(str(path))
        except Exception as e:  # safetensors raises its own error types for truncated or foreign files
            raise InputError(f"{path} is not a readable {what} file (truncated or corrupt?): {e}") from e
        if meta.get("format") != cls.format():
            raise InputError(f"{path} is not a {what} file (format {meta.get('format')!r}, expected {cls.format()!r})")
        if meta.get("format_version") != str(cls.FORMAT_VERSION):
            raise InputError(
                f"{path} has {what} format version {meta.get('format_version')}; this segad reads {cls.FORMAT_VERSION}"
            )
        try:
            config = cls.config_class.from_params({**json.loads(meta["config"]), "device": device})
            size = json.loads(meta["image_size"])
            report = json.loads(meta.get("report", "null"))
            losses = json.loads(meta.get("losses", "[]"))
        except (KeyError, TypeError, json.JSONDecodeError) as e:
            raise InputError(f"{path}: the {what} metadata is damaged ({e}); save the model again") from e
        model = cls(config)
        model.image_size_ = (int(size[0]), int(size[1]))  # a network may be built for its image size (DRA)
        net = model._build()
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise InputError(f"{path}: the weights do not fit a {config.backbone} {what} ({e})") from e
        model.model_ = net.eval()
        model.losses_ = losses
        model.report_ = PhaseReport(**report) if report else None
        return model
