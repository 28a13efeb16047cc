"""One-class base detectors and the pretrained backbones they stand on."""

from detectors.backbones import BACKBONES, DEFAULT_BACKBONE, Backbone, BackboneWeightsError, load_backbone
from detectors.base import Detector, DetectorConfig, DetectorOutput
from detectors.device import resolve_device
from detectors.errors import InputError
from detectors.padim import Padim, PadimConfig
from detectors.patchcore import PatchCore, PatchCoreConfig
from detectors.registry import DEFAULT_DETECTORS, DETECTORS, detector_class, load_detector, make_detector

__all__ = [
    "BACKBONES",
    "DEFAULT_BACKBONE",
    "DEFAULT_DETECTORS",
    "DETECTORS",
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
    "detector_class",
    "load_backbone",
    "load_detector",
    "make_detector",
    "resolve_device",
]
