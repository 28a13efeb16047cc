"""One-class base detectors and the pretrained backbones they stand on."""

from detectors.backbones import BACKBONES, DEFAULT_BACKBONE, Backbone, BackboneWeightsError, load_backbone
from detectors.base import Detector, DetectorConfig, DetectorOutput
from detectors.device import resolve_device
from detectors.errors import InputError
from detectors.padim import Padim, PadimConfig
from detectors.patchcore import PatchCore, PatchCoreConfig
from detectors.registry import (
    DEFAULT_DETECTORS,
    DETECTORS,
    ENTRY_POINT_GROUP,
    available,
    detector_class,
    load_detector,
    make_detector,
    register_detector,
)

__all__ = [
    "BACKBONES",
    "DEFAULT_BACKBONE",
    "DEFAULT_DETECTORS",
    "DETECTORS",
    "ENTRY_POINT_GROUP",
    "Backbone",
    "BackboneWeightsError",
    "Detector",
    "DetectorConfig",
    "DetectorOutput",
    "InputError",
    "Padim",
    "PadimConfig",
    "PatchCore",
    "PatchCoreConfig",
    "available",
    "detector_class",
    "load_backbone",
    "load_detector",
    "make_detector",
    "register_detector",
    "resolve_device",
]
