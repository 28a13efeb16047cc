"""The detector API every base detector follows, in the scikit-learn habit.

``fit(good_images)`` returns self and leaves fitted state in attributes ending in ``_``;
``predict(images)`` is pure and returns per-pixel anomaly maps plus one score per image, higher
meaning more anomalous. State is saved as plain tensors in a safetensors file whose metadata
carries the detector's name and config, so nothing pickled is ever loaded.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, Self

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from detectors.atomic import atomic_write
from detectors.backbones import DEFAULT_BACKBONE, Backbone, load_backbone
from detectors.device import resolve_device
from detectors.errors import InputError
from detectors.maps import parse_layers, pooled_features

ImageBatch = np.ndarray | torch.Tensor
DEVICE_TYPES = ("cpu", "cuda")


@dataclass(frozen=True)
class DetectorConfig:
    """Flat primitives only, so a config logs to MLflow as params and hashes into a cache key.

    Every option is part of the detector's identity (its map-cache key and checkpoint identity)
    unless ``RESULT_NEUTRAL`` names it, with the reason it cannot change a fitted detector or its
    maps. A subclass extends its parent's mapping; tests/detectors/test_cache.py walks every field
    of every registered detector and fails on one that neither changes the key nor has a reason.
    """

    RESULT_NEUTRAL: ClassVar[Mapping[str, str]] = MappingProxyType(
        {
            "device": "the key holds the resolved device type (cpu or cuda) instead, which is what can change "
            "a fit (CPU and GPU coresets, bfloat16 autocast on GPU); 'auto' and 'cuda' on one GPU compute the same",
            "progress": "only shows or hides a progress bar",
        }
    )

    backbone: str = DEFAULT_BACKBONE
    seed: int = 0
    device: str = "auto"
    batch_size: int = 16
    progress: bool = True

    def to_params(self) -> dict[str, Any]:
        return asdict(self)

    def identity(self, device_type: str | None = None) -> dict[str, Any]:
        """What a fit depends on: every option not in ``RESULT_NEUTRAL``, plus the device type it runs on.

        ``device_type`` ("cpu" or "cuda") stands in for resolving ``device`` on this machine, e.g. to
        build the key of a GPU fit where there is no GPU.
        """
        if device_type is None:
            device_type = resolve_device(self.device).type
        if device_type not in DEVICE_TYPES:
            raise ValueError(f"device_type must be one of {DEVICE_TYPES}, got {device_type!r}")
        ident = {k: v for k, v in asdict(self).items() if k not in self.RESULT_NEUTRAL}
        return {**ident, "device_type": device_type}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Self:
        """Build from flat params; strings (from a CLI or MLflow) are converted to the fields' types."""
        known = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise InputError(f"{cls.__name__} has no option(s) {unknown}; options: {sorted(known)}")
        return cls(**{k: _coerce(k, v, known[k]) for k, v in params.items()})


def _coerce(name: str, value: Any, annotation: Any) -> Any:
    if not isinstance(value, str):
        return value
    kind = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    if kind == "bool":
        if value.lower() in ("1", "true", "yes"):
            return True
        if value.lower() in ("0", "false", "no"):
            return False
    elif kind in ("int", "float"):
        try:
            return int(value) if kind == "int" else float(value)
        except ValueError:
            pass
    else:
        return value
    raise InputError(f"option {name}: {value!r} is not a {kind}")


@dataclass(frozen=True)
class DetectorOutput:
    maps: np.ndarray  # (N, H, W) float32
    scores: np.ndarray  # (N,) float32


def as_image_tensor(images: ImageBatch, what: str = "images") -> torch.Tensor:
    """Validate an (N, 3, H, W) batch; mixed sizes must be resized before they get here."""
    if isinstance(images, list | tuple):
        shapes = {tuple(np.shape(im)) for im in images}
        if len(shapes) > 1:
            raise InputError(f"{what} have mixed sizes {sorted(shapes)}; resize them to one size first")
        images = np.stack(images) if images else np.empty((0, 3, 0, 0), np.float32)
    t = torch.as_tensor(images)
    if t.ndim != 4 or t.shape[1] != 3:
        raise InputError(f"{what} must be an (N, 3, H, W) batch, got shape {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise InputError(f"{what}: the batch is empty; a detector needs at least one image")
    if not torch.isfinite(t).all():
        raise InputError(f"{what} contain NaN or infinite values; check the image files and their normalisation")
    return t.float()


class Detector(ABC):
    name: ClassVar[str]
    config_class: ClassVar[type[DetectorConfig]]
    # Bumped whenever the computation changes, so maps cached by an older version are not reused.
    version: ClassVar[int] = 1

    def __init__(self, config: DetectorConfig | None = None, **overrides: Any) -> None:
        config = config or self.config_class()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} takes a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = type(config).from_params({**config.to_params(), **overrides})
        self._backbone: Backbone | None = None

    # --- shared machinery ---------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return resolve_device(self.config.device)

    @property
    def backbone(self) -> Backbone:
        if self._backbone is None:
            self._backbone = load_backbone(self.config.backbone, self.device)
        return self._backbone

    def is_fitted(self) -> bool:
        return getattr(self, "image_size_", None) is not None

    def _check_fitted(self, images: torch.Tensor) -> None:
        if not self.is_fitted():
            raise RuntimeError(f"{self.name} is not fitted: call fit(good_images) or load a saved detector first")
        if tuple(images.shape[-2:]) != self.image_size_:
            raise InputError(
                f"{self.name} was fitted on {self.image_size_} images, got {tuple(images.shape[-2:])}; "
                "resize to the fitted size"
            )

    def _require_size(self, images: torch.Tensor, layers: Sequence[str], cells: int = 2, why: str = "") -> None:
        """Refuse images too small for ``cells`` features per side on the coarsest of ``layers``."""
        from detectors.backbones import STRIDES

        unknown = sorted(set(layers) - set(STRIDES))
        if unknown:
            raise InputError(f"{self.name}: unknown layers {unknown}; choose from {sorted(STRIDES)}")
        need = cells * max(STRIDES[n] for n in layers)
        if min(images.shape[-2:]) < need:
            raise InputError(
                f"{self.name} needs images of at least {need}x{need} for layers {'+'.join(layers)!r}{why}; "
                f"got {tuple(images.shape[-2:])}: resize them"
            )

    def _pooled_features(self, batch: torch.Tensor, layers: str, avg_kernel: int) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C, h, w): the named backbone levels, locally averaged, at the finest level."""
        names = parse_layers(layers)
        with torch.inference_mode():
            feats = pooled_features(self.backbone(batch, names), names, avg_kernel)
        if not torch.isfinite(feats).all():
            raise InputError(f"{self.name}: the backbone produced NaN features; check the input images")
        return feats

    def _batches(self, images: torch.Tensor, desc: str):
        from tqdm.auto import tqdm

        bs = self.config.batch_size
        starts = range(0, images.shape[0], bs)
        show = self.config.progress and len(starts) > 4
        # disable=None: tqdm shows the bar on a terminal only, so logs and CI stay clean.
        for s in tqdm(starts, desc=f"{self.name} {desc}", disable=None if show else True, leave=False, unit="batch"):
            yield images[s : s + bs].to(self.device, non_blocking=True)

    def _image_scores(self, maps: torch.Tensor) -> torch.Tensor:
        """An image's score from its map: the maximum (a detector with another rule overrides this)."""
        return maps.flatten(1).max(1).values

    def _predict_maps(
        self, images: ImageBatch, make_map_fn: Callable[[], Callable[[torch.Tensor], torch.Tensor]]
    ) -> DetectorOutput:
        """The predict shell detectors share: validate, then batch by batch the map without autograd, its
        score, collected. ``make_map_fn`` runs after validation, so an unfitted detector fails clearly."""
        x = as_image_tensor(images)
        self._check_fitted(x)
        map_fn = make_map_fn()
        maps, scores = [], []
        for batch in self._batches(x, "predict"):
            with torch.inference_mode():
                m = map_fn(batch)
                scores.append(self._image_scores(m).float().cpu())
            maps.append(m.float().cpu())
        return DetectorOutput(torch.cat(maps).numpy(), torch.cat(scores).numpy())

    # --- the API ------------------------------------------------------------------------------
    @abstractmethod
    def fit(self, images: ImageBatch) -> Self: ...

    @abstractmethod
    def predict(self, images: ImageBatch) -> DetectorOutput: ...

    @abstractmethod
    def _state(self) -> dict[str, torch.Tensor]: ...

    @abstractmethod
    def _set_state(self, state: dict[str, torch.Tensor]) -> None: ...

    def _metadata(self) -> dict[str, str]:
        """Extra strings stored beside the tensors (e.g. a trainable detector's training report)."""
        return {}

    def _set_metadata(self, meta: dict[str, str]) -> None:  # noqa: B027 - optional hook
        """Inverse of ``_metadata`` on load."""

    def save(self, path: str | Path) -> Path:
        """Write fitted state atomically as safetensors."""
        if not self.is_fitted():
            raise RuntimeError(f"{self.name} is not fitted; nothing to save")
        state = {k: v.detach().cpu().contiguous() for k, v in self._state().items()}
        state["image_size_"] = torch.tensor(self.image_size_, dtype=torch.int64)
        meta = {"detector": self.name, "config": json.dumps(self.config.to_params()), **self._metadata()}
        return atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=meta))


def read_metadata(path: str | Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def load_state(det: Detector, path: str | Path) -> Detector:
    state = load_file(str(path))
    det.image_size_ = tuple(int(v) for v in state.pop("image_size_").tolist())
    det._set_state(state)
    det._set_metadata(read_metadata(path))
    return det
