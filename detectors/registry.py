"""Detectors by name, so the CLI and Optuna pick them with a string."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from detectors.base import Detector, load_state, read_metadata
from detectors.draem import Draem
from detectors.efficientad import EfficientAD
from detectors.errors import InputError
from detectors.fastflow import FastFlow
from detectors.padim import Padim
from detectors.patchcore import PatchCore
from detectors.rd4ad import RD4AD

DETECTORS: dict[str, type[Detector]] = {
    cls.name: cls for cls in (PatchCore, Padim, RD4AD, FastFlow, EfficientAD, Draem)
}
DEFAULT_DETECTORS = ("patchcore", "padim")


def detector_class(name: str) -> type[Detector]:
    try:
        return DETECTORS[name]
    except KeyError:
        raise InputError(f"unknown detector {name!r}; available: {', '.join(sorted(DETECTORS))}") from None


def make_detector(name: str, **params: Any) -> Detector:
    """A detector with its default config, overridden by ``params`` (flat primitives)."""
    cls = detector_class(name)
    return cls(cls.config_class.from_params(params))


def load_detector(path: str | Path) -> Detector:
    """Rebuild a saved detector from its safetensors file alone."""
    meta = read_metadata(path)
    if "detector" not in meta:
        raise InputError(f"{path} is not a segad detector file (no 'detector' metadata)")
    det = make_detector(meta["detector"], **json.loads(meta["config"]))
    return load_state(det, path)
