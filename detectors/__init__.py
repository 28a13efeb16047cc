"""One-class base detectors and the pretrained backbones they stand on."""

from detectors.backbones import BACKBONES, DEFAULT_BACKBONE, Backbone, BackboneWeightsError, load_backbone
from detectors.device import resolve_device

__all__ = ["BACKBONES", "DEFAULT_BACKBONE", "Backbone", "BackboneWeightsError", "load_backbone", "resolve_device"]
