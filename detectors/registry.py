"""Detectors by name, so the CLI, the map cache, Optuna and a saved model pick them with a string.

segad's own detectors are registered here. Another package adds its own in one of two ways:

- ``register_detector(MyDetector)`` (also a class decorator) in code that runs before segad needs it;
- an entry point in the group ``segad.detectors`` naming the class, found the first time a name is looked
  up, so ``python -m segad.train --detectors mine``, ``SegadPipeline.load`` and the MLflow pyfunc know it
  once the package is installed::

      [project.entry-points."segad.detectors"]
      mine = "my_package.detector:MyDetector"

A registered class subclasses ``detectors.base.Detector`` with a ``name`` and a ``config_class``
(a ``DetectorConfig`` of flat primitives, every result-changing option in the cache key), and passes
``detectors.contract.check_detector``.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import is_dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from detectors.altub import AltUB
from detectors.anogan import AnoGAN
from detectors.ast import AST
from detectors.autoencoder import AutoencoderL2, AutoencoderSSIM
from detectors.base import Detector, DetectorConfig, load_state, read_metadata
from detectors.cdo import CDO
from detectors.cfa import CFA
from detectors.cflow import CFlow
from detectors.draem import Draem
from detectors.efficientad import EfficientAD
from detectors.errors import InputError
from detectors.fastflow import FastFlow
from detectors.feature_dictionary import FeatureDictionary
from detectors.memseg import MemSeg
from detectors.msflow import MSFlow
from detectors.mspba import MSPBA
from detectors.padim import Padim
from detectors.patchcore import PatchCore
from detectors.pfm import PEFM, PFM
from detectors.ppdm import PPDM
from detectors.rd4ad import RD4AD
from detectors.riad import RIAD
from detectors.simplenet import SimpleNet
from detectors.students import Students
from detectors.variation_model import VariationModel

ENTRY_POINT_GROUP = "segad.detectors"
DEFAULT_DETECTORS = ("patchcore", "padim")
BUILTIN = (
    PatchCore,
    Padim,
    RD4AD,
    FastFlow,
    EfficientAD,
    Draem,
    PFM,
    PEFM,
    CFA,
    MSPBA,
    SimpleNet,
    CDO,
    AltUB,
    AST,
    CFlow,
    MSFlow,
    MemSeg,
    PPDM,
    FeatureDictionary,
    VariationModel,
    AutoencoderL2,
    AutoencoderSSIM,
    Students,
    AnoGAN,
    RIAD,
)
# A name goes into comma-separated CLI lists, NAME.OPTION=VALUE pairs, file names and MLflow keys.
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")

DETECTORS: dict[str, type[Detector]] = {cls.name: cls for cls in BUILTIN}
_plugins_loaded = False


class PluginError(InputError):
    """A detector that cannot be registered: the message names it and what it lacks."""


def register_detector(cls: type[Detector], *, replace: bool = False) -> type[Detector]:
    """Make ``cls`` known by its ``name``; returns it, so it also works as a class decorator."""
    where = f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', cls)}"
    if not (isinstance(cls, type) and issubclass(cls, Detector)):
        raise PluginError(f"{where}: a detector must subclass detectors.base.Detector")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not _NAME.match(name):
        raise PluginError(
            f"{where}: name must be lower-case letters, digits and _ (starting with a letter), got {name!r}"
        )
    config = getattr(cls, "config_class", None)
    if not (isinstance(config, type) and issubclass(config, DetectorConfig) and is_dataclass(config)):
        raise PluginError(f"{where}: config_class must be a dataclass subclassing detectors.base.DetectorConfig")
    if name in DETECTORS and DETECTORS[name] is not cls and not replace:
        have = DETECTORS[name]
        raise PluginError(
            f"{where}: the name {name!r} is taken by {have.__module__}.{have.__qualname__}; "
            "choose another name, or pass replace=True to override it on purpose"
        )
    DETECTORS[name] = cls
    return cls


def load_plugins() -> None:
    """Register every installed package's detectors (entry point group ``segad.detectors``), once.

    A plug-in that fails to import or register is skipped with a warning that names it: one broken
    package must not take the built-in detectors down with it."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            cls = ep.load()
            if getattr(cls, "name", None) != ep.name:
                raise PluginError(
                    f"the entry point is called {ep.name!r} but the class's name is {getattr(cls, 'name', None)!r}"
                )
            register_detector(cls)
        except Exception as e:  # any plug-in failure becomes a warning naming it
            warnings.warn(f"segad: detector plug-in {ep.name} = {ep.value} is not available: {e}", stacklevel=2)


def available() -> dict[str, type[Detector]]:
    """Every detector by name: segad's and installed plug-ins'."""
    load_plugins()
    return dict(DETECTORS)


def detector_class(name: str) -> type[Detector]:
    registry = available()
    if name not in registry and name.startswith("anomalib_"):
        from detectors.anomalib_models import anomalib_class

        register_detector(anomalib_class(name))  # or an InputError: anomalib missing, or no such model
        registry = available()
    try:
        return registry[name]
    except KeyError:
        raise InputError(f"unknown detector {name!r}; available: {', '.join(sorted(registry))}") from None


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
