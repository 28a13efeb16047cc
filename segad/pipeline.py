"""The deployable model: preprocessing + fitted detectors + segmenter + feature layout + classifier + threshold.

It scores exactly what ``segad.train`` scored: files or raw images go through the run's resize and
``--intensity`` adjustment, and maps are rounded to the cache's float16 before their statistics, so a
loaded model reproduces the run's scores (a test holds it to 1e-5 for every preset and mode).

Saved as a folder of safe formats (safetensors for tensors, XGBoost JSON, a JSON manifest), so
loading it never unpickles anything.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
from safetensors.torch import load_file, save_file

from detectors.base import Detector
from detectors.errors import InputError
from detectors.registry import load_detector
from features.segments import FolderSegments, KMeansConfig, KMeansSegments, Segmenter, WholeImage
from features.vector import feature_matrix, feature_names
from segad.classifier import SegadClassifier
from segad.crossfit import SupervisedInput
from segad.data.images import Intensity, as_rgb, model_input
from segad.data.shapes import SourceShape
from segad.explain import Explanation
from segad.explain import explain as explain_scores
from segad.manifest import read_manifest
from segad.mapfolder import GivenMaps, MapInput
from segad.maps import as_stored, check_maps
from segad.overlay import MapScale
from segad.selection import ScoreBlend
from segad.supervised import SUPERVISED

ImageInput = str | Path | np.ndarray  # a file, or a raw (H, W[, C]) RGB image: uint8, uint16 or float in [0, 1]
# An input computed elsewhere -> each image's map (file or array) and its scores (None: each map's maximum).
GivenBatch = Mapping[str, tuple[Sequence[MapInput], Sequence[float] | None]]

MANIFEST = "segad_pipeline.json"


@dataclass(frozen=True)
class PipelineOutput:
    scores: np.ndarray  # (N,) the final score (the run's chosen blend of margins and detector scores), higher = worse
    decisions: np.ndarray  # (N,) bool, score >= threshold
    maps: dict[str, np.ndarray]  # detector name -> (N, H, W) anomaly maps
    explanations: list[Explanation] | None = None  # why each score (predict_batch(..., explain=True))
    segments: np.ndarray | None = None  # (N, H, W) segment labels, with the explanations
    detector_scores: dict[str, np.ndarray] | None = None  # each detector's image scores, with the explanations


def image_list(images: Sequence[ImageInput] | np.ndarray) -> list[ImageInput]:
    """Files, raw images, an (N, H, W, C) stack or one (H, W[, C]) image -> a list of single images."""
    if isinstance(images, np.ndarray):
        if images.ndim == 4 and images.shape[1] == 3 and images.shape[-1] not in (1, 3, 4):
            raise InputError(
                f"images of shape {images.shape} look model-ready (N, 3, H, W): pass raw (N, H, W, C) images "
                "or files to predict, or a preprocessed batch to predict_batch"
            )
        images = list(images) if images.ndim == 4 else [images]
    elif isinstance(images, str | Path):
        images = [images]
    if len(images) == 0:
        raise InputError("no images to score")
    return list(images)


class ReadImage(NamedTuple):
    """One image as the pipeline read it: once decoded, it serves the model, the overlays and the note."""

    array: np.ndarray  # (3, H, W) model-ready
    rgb: np.ndarray  # (h, w, 3) in [0, 1], native size, before any adjustment
    note: str  # why its size or aspect is unlike the training images'; "" when it is not


class SegadPipeline:
    def __init__(
        self,
        detectors: Sequence[Detector | SupervisedInput | GivenMaps],
        segmenter: Segmenter,
        classifier: SegadClassifier,
        image_size: tuple[int, int],
        threshold: float = 0.0,
        info: dict | None = None,
        with_scores: bool = True,
        intensity: Intensity = "none",
        blend: ScoreBlend | None = None,
        source: SourceShape | None = None,
    ) -> None:
        self.detectors = list(detectors)
        self.segmenter = segmenter
        self.classifier = classifier
        self.image_size = tuple(image_size)
        self.threshold = float(threshold)
        self.info = dict(info or {})
        self.with_scores = with_scores
        self.intensity = intensity  # how images are adjusted before the detectors: model_input(..., intensity)
        # The final score chosen at training (segad.selection); None: the classifier's margin alone.
        self.blend = blend or ScoreBlend.classifier_only([d.name for d in self.detectors])
        self.source = source  # the training images' native sizes (None: a model saved before they were kept)

    @property
    def n_segments(self) -> int:
        return int(self.segmenter.n_segments_)

    @property
    def map_scales(self) -> dict[str, MapScale]:
        """Each detector's overlay colour scale, set on held-out good images at training (segad.overlay);
        empty for a model saved before scales were kept."""
        return {n: MapScale(**v) for n, v in self.info.get("map_scales", {}).items()}

    @property
    def given_maps(self) -> list[str]:
        """The inputs whose maps were computed elsewhere: scoring needs them with each image."""
        return [d.name for d in self.detectors if isinstance(d, GivenMaps)]

    @property
    def feature_names(self) -> list[str]:
        return feature_names([d.name for d in self.detectors], self.n_segments, self.with_scores)

    def prepare(self, image: ImageInput) -> np.ndarray:
        """One file or raw image -> the (3, H, W) model-ready array the run scored (size, intensity, normalisation)."""
        return self.read(image).array

    def read(self, image: ImageInput) -> ReadImage:
        """``prepare``'s array, the image as decoded, and a note when its native size is unlike the training
        images' ("")."""
        rgb = as_rgb(image)
        note = self.source.note(rgb.shape[:2]) if self.source is not None else ""
        return ReadImage(model_input(rgb, self.image_size, self.intensity), rgb, note)

    def preprocess(self, images: Sequence[ImageInput] | np.ndarray) -> np.ndarray:
        """Files or raw images -> an (N, 3, H, W) model-ready batch. An (N, H, W, C) array is N raw images."""
        return np.stack([self.prepare(im) for im in image_list(images)])

    def detect(
        self, batch: np.ndarray, names=None, given: GivenBatch | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Each detector's maps (at the cache's float16, as training read them) and image scores; ``given``:
        the maps (files or arrays) and optional scores of the inputs computed elsewhere, per image of ``batch``."""
        names = names or [f"image {i}" for i in range(len(batch))]
        given = given or {}
        if missing := [n for n in self.given_maps if n not in given]:
            raise InputError(
                f"this model stacks maps computed elsewhere ({', '.join(missing)}): give each image's map with it "
                f"(segad.predict --maps {missing[0]}=DIR; pyfunc: a {missing[0]}_map column; Python: "
                f"predict(..., maps={{{missing[0]!r}: [files]}}))"
            )
        maps, scores = {}, {}
        for d in self.detectors:
            if isinstance(d, GivenMaps):
                files, given_scores = given[d.name]
                if len(files) != len(batch):
                    raise InputError(f"{d.name}: {len(files)} maps given for {len(batch)} images")
                out = d.predict(files, given_scores)
            else:
                out = d.predict(batch)
            check_maps(d.name, out.maps, names)
            maps[d.name], scores[d.name] = as_stored(out.maps), out.scores
        return maps, scores

    def features(
        self,
        batch: np.ndarray,
        segment_paths: Sequence[Path | None] | None = None,
        names=None,
        given: GivenBatch | None = None,
    ):
        """Feature rows of a model-ready batch, as training computed them, with ``detect``'s maps and scores."""
        X, maps, scores, _ = self._rows(batch, segment_paths, names, given)
        return X, maps, scores

    def _rows(self, batch: np.ndarray, segment_paths=None, names=None, given: GivenBatch | None = None):
        maps, scores = self.detect(batch, names, given)
        segments = self.segmenter.predict(batch, segment_paths)
        X = feature_matrix(maps, scores, segments, self.n_segments, with_scores=self.with_scores)
        return X, maps, scores, segments

    def predict(
        self,
        images: Sequence[ImageInput] | np.ndarray,
        segment_paths: Sequence[Path | None] | None = None,
        maps: Mapping[str, Sequence[MapInput]] | None = None,
        map_scores: Mapping[str, Sequence[float]] | None = None,
        explain: bool = False,
    ) -> PipelineOutput:
        """Score files or raw RGB images (paths, (H, W[, C]) arrays, or an (N, H, W, C) stack); ``maps``:
        each image's map for every input computed elsewhere (``given_maps``), ``map_scores`` their image
        scores when the model was trained on given scores; ``explain``: why each score (segad.explain)."""
        names = None
        if not isinstance(images, np.ndarray) and all(isinstance(im, str | Path) for im in images):
            names = [str(im) for im in images]
        given = {n: (m, (map_scores or {}).get(n)) for n, m in (maps or {}).items()}
        return self.predict_batch(self.preprocess(images), segment_paths, names, given, explain)

    def predict_batch(
        self,
        batch: np.ndarray,
        segment_paths: Sequence[Path | None] | None = None,
        names=None,
        given: GivenBatch | None = None,
        explain: bool = False,
    ) -> PipelineOutput:
        """Score an (N, 3, H, W) batch already prepared by ``prepare`` / ``preprocess``; ``explain``: also
        each score's split into (detector, segment) shares (segad.explain) and the segment maps (None when
        the saved score is the ensemble or a detector: its shares are the detectors' image scores)."""
        batch = np.asarray(batch, np.float32)
        X = prior = segments = None
        margins = np.zeros(len(batch))
        if self.blend.weight > 0:
            X, maps, detector_scores, segments = self._rows(batch, segment_paths, names, given)
            prior = None if self.classifier.prior_ is None else self.blend.ensemble_score(detector_scores)
            margins = self.classifier.decision_function(X, prior)
        else:  # the chosen score is the ensemble or a detector: segments, statistics, forest would be wasted
            maps, detector_scores = self.detect(batch, names, given)
        scores = self.blend.score(margins, detector_scores)
        out = PipelineOutput(scores, scores >= self.threshold, {k: m.astype(np.float32) for k, m in maps.items()})
        if not explain:
            return out
        why = explain_scores(self.blend, self.classifier, self.feature_names, X, detector_scores, prior)
        return replace(out, explanations=why, segments=segments, detector_scores=dict(detector_scores))

    # --- persistence ----------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the model folder atomically: a reader sees the old model or the new one, never half."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
        try:
            for d in self.detectors:
                if not isinstance(d, GivenMaps):  # nothing to save: its maps come with each image
                    d.save(tmp / f"detector_{d.name}.safetensors")
            self.classifier.save(tmp / "classifier.json")
            seg: dict = {"method": "whole"}
            if isinstance(self.segmenter, KMeansSegments):
                seg = {"method": "kmeans", "config": self.segmenter.config.__dict__}
                save_file({"centroids": self.segmenter.centroids_.contiguous()}, str(tmp / "segments.safetensors"))
            elif isinstance(self.segmenter, FolderSegments):
                seg = {"method": "folder", "n_segments": self.segmenter.n_segments_}
            manifest = {
                "format": 1,
                "detectors": [d.name for d in self.detectors],
                "given_maps": {d.name: d.score_source for d in self.detectors if isinstance(d, GivenMaps)},
                "segments": seg,
                "classifier": {
                    "preset": self.classifier.preset,
                    "seed": self.classifier.seed,
                    "prior": self.classifier.prior_,  # (a, b): it starts from the ensemble
                },
                "image_size": list(self.image_size),
                "intensity": self.intensity,
                "threshold": self.threshold,
                "blend": self.blend.to_dict(),
                "with_scores": self.with_scores,
                "feature_names": self.feature_names,
                "info": self.info,
            }
            if self.source is not None:
                manifest["source_shape"] = self.source.to_dict()
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
            if path.exists():
                old = path.with_name(f".{path.name}.old-{os.getpid()}")
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return path

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> SegadPipeline:
        path = Path(path)
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            raise InputError(f"{path} is not a saved segad pipeline (no {MANIFEST}); give the folder segad.train saved")
        m = read_manifest(manifest_path)
        needed = ["classifier.json"] + (["segments.safetensors"] if m["segments"]["method"] == "kmeans" else [])
        if missing := [name for name in needed if not (path / name).is_file()]:
            raise InputError(f"{path}: {', '.join(missing)} is missing beside {MANIFEST}; save the model again")
        detectors = []
        given_maps = m.get("given_maps", {})
        for name in m["detectors"]:
            if name in given_maps:
                detectors.append(GivenMaps(name, tuple(m["image_size"]), given_maps[name]))
                continue
            file = path / f"detector_{name}.safetensors"
            if not file.is_file():
                raise InputError(f"{manifest_path} names detector {name!r}, but {file.name} is not beside it")
            if name in SUPERVISED:  # a stacked supervised input (--detectors devnet): its own file format
                detectors.append(SupervisedInput.load(file, name, device))
                continue
            det = load_detector(file)
            if det.name != name:
                raise InputError(f"{file} holds a {det.name} detector, not the {name} that {MANIFEST} names")
            det.config = type(det.config).from_params({**det.config.to_params(), "device": device, "progress": False})
            detectors.append(det)
        seg = m["segments"]
        if seg["method"] == "kmeans":
            segmenter = KMeansSegments(KMeansConfig(**{**seg["config"], "device": device}))
            segmenter.centroids_ = load_file(str(path / "segments.safetensors"))["centroids"]
        elif seg["method"] == "folder":
            segmenter = FolderSegments(seg["n_segments"])
        else:
            segmenter = WholeImage()
        clf = SegadClassifier.load(path / "classifier.json", m["classifier"]["preset"])
        clf.seed = m["classifier"]["seed"]
        if m["classifier"].get("prior") is not None:
            clf.prior_ = tuple(m["classifier"]["prior"])
        with_scores = m.get("with_scores", True)
        expected = feature_names(m["detectors"], segmenter.n_segments_, with_scores)
        if expected != m["feature_names"]:
            # The feature layout binds the detectors' order: a reordered list would feed the forest
            # one detector's statistics in another's columns and score wrongly without a word.
            raise InputError(
                f"{manifest_path}: the detectors {m['detectors']} and segments do not give the features the "
                "classifier was trained on (a reordered or edited detector list?); save the model again"
            )
        return cls(
            detectors,
            segmenter,
            clf,
            tuple(m["image_size"]),
            m["threshold"],
            m.get("info"),
            with_scores,
            m.get("intensity", "none"),
            ScoreBlend.from_dict(m["blend"]) if "blend" in m else None,
            SourceShape.from_dict(m["source_shape"]) if "source_shape" in m else None,
        )
