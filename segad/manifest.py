"""The saved pipeline's manifest, checked before anything is built from it.

A model folder is an artefact that travels (a registry, a share, an edit by hand), so its JSON is not
trusted: a wrong type, an unknown option, a newer format or a reordered detector list must be an error
that names the file and the key, never a traceback or, worse, a model that loads and scores wrongly.
"""

from __future__ import annotations

import json
import math
from dataclasses import fields
from pathlib import Path
from typing import Any

from detectors.errors import InputError
from features.segments import KMeansConfig
from segad.classifier import PRESETS
from segad.data.images import INTENSITIES

FORMAT = 1
SEGMENT_METHODS = ("whole", "kmeans", "folder")
REQUIRED = ("format", "detectors", "segments", "classifier", "image_size", "threshold", "feature_names")
OPTIONAL = ("intensity", "blend", "with_scores", "info", "source_shape", "given_maps")
SCORE_SOURCES = ("map_max", "given")  # segad.mapfolder.ScoreSource


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest at ``path``, with every key's type and value checked."""
    try:
        m = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: not a readable JSON manifest ({e}); save the model again with segad.train") from e

    def bad(key: str, what: str) -> InputError:
        return InputError(f"{path}: {key!r} {what}; the file was edited or damaged: save the model again")

    if not isinstance(m, dict):
        raise bad("(top level)", "is not a JSON object")
    missing = [k for k in REQUIRED if k not in m]
    if missing:
        raise bad(", ".join(missing), "is missing")
    unknown = sorted(set(m) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise bad(", ".join(unknown), "is not a manifest key")
    if m["format"] != FORMAT:
        raise InputError(
            f"{path}: format {m['format']!r}; this segad reads format {FORMAT}: load it with the segad that saved it"
        )
    names = m["detectors"]
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        raise bad("detectors", "must be a non-empty list of detector names")
    if len(set(names)) != len(names):
        raise bad("detectors", f"names a detector twice: {names}")
    size = m["image_size"]
    if not (isinstance(size, list) and len(size) == 2 and all(_int(v) and v >= 8 for v in size)):
        raise bad("image_size", f"must be [height, width] of at least 8 pixels, got {size!r}")
    if not (_number(m["threshold"]) and math.isfinite(m["threshold"])):
        raise bad("threshold", f"must be a finite number, got {m['threshold']!r}")
    if m.get("intensity", "none") not in INTENSITIES:
        raise bad("intensity", f"must be one of {', '.join(INTENSITIES)}, got {m.get('intensity')!r}")
    if not isinstance(m.get("with_scores", True), bool):
        raise bad("with_scores", "must be true or false")
    if not (isinstance(m["feature_names"], list) and all(isinstance(n, str) for n in m["feature_names"])):
        raise bad("feature_names", "must be a list of strings")
    _check_segments(m["segments"], bad)
    _check_classifier(m["classifier"], bad)
    if not isinstance(m.get("blend", {}), dict):
        raise bad("blend", "must be an object")
    if "source_shape" in m:
        _check_source_shape(m["source_shape"], bad)
    given = m.get("given_maps", {})
    if not (isinstance(given, dict) and set(given) <= set(names) and all(v in SCORE_SOURCES for v in given.values())):
        raise bad("given_maps", f"must map some of the detectors to one of {', '.join(SCORE_SOURCES)}, got {given!r}")
    return m


def _check_source_shape(src: Any, bad) -> None:
    """{"height": [lo, hi], "width": [lo, hi], "aspect": [lo, hi]}, each a positive, ordered pair."""

    def pair(v: Any, check) -> bool:
        return isinstance(v, list) and len(v) == 2 and all(map(check, v)) and 0 < v[0] <= v[1]

    if not (
        isinstance(src, dict)
        and set(src) == {"height", "width", "aspect"}
        and pair(src["height"], _int)
        and pair(src["width"], _int)
        and pair(src["aspect"], _number)
    ):
        raise bad("source_shape", f"must hold height, width and aspect as [min, max] pairs, got {src!r}")


def _check_segments(seg: Any, bad) -> None:
    if not isinstance(seg, dict) or seg.get("method") not in SEGMENT_METHODS:
        raise bad("segments", f"must name a method of {', '.join(SEGMENT_METHODS)}, got {seg!r}")
    if seg["method"] == "kmeans":
        config = seg.get("config")
        known = {f.name for f in fields(KMeansConfig)}
        if not isinstance(config, dict) or set(config) - known:
            extra = sorted(set(config) - known) if isinstance(config, dict) else config
            raise bad("segments.config", f"holds what k-means segments do not know: {extra!r}")
        if not (_int(config.get("k")) and config["k"] >= 1):
            raise bad("segments.config.k", f"must be a positive integer, got {config.get('k')!r}")
    if seg["method"] == "folder" and not (_int(seg.get("n_segments")) and seg["n_segments"] >= 1):
        raise bad("segments.n_segments", f"must be a positive integer, got {seg.get('n_segments')!r}")


def _check_classifier(clf: Any, bad) -> None:
    if not isinstance(clf, dict) or clf.get("preset") not in PRESETS:
        raise bad("classifier.preset", f"must be one of {', '.join(PRESETS)}")
    if not _int(clf.get("seed")):
        raise bad("classifier.seed", f"must be an integer, got {clf.get('seed')!r}")
    prior = clf.get("prior")
    if prior is not None and not (isinstance(prior, list) and len(prior) == 2 and all(map(_number, prior))):
        raise bad("classifier.prior", f"must be null or two numbers, got {prior!r}")


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)
