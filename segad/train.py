"""``python -m segad.train``: SegAD against its base detectors, over SegAD's seeds, on one dataset.

The pipeline, top to bottom: images -> detectors (fit on good, maps cached) -> segments -> per-segment
features -> classifier per seed -> scores -> metrics. Every base detector alone, a naive ensemble
(mean of z-normalised detector scores) and SegAD are scored on the same test set of each seed; the
table gives image AUROC and FPR@95TPR as mean ± std over seeds. The saved model's classifier is the
first seed's (held-out good + that seed's shots + generated defects).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np

from detectors import DEFAULT_BACKBONE, DEFAULT_DETECTORS, DetectorConfig
from detectors.anomalib_models import PREFIX as ANOMALIB_PREFIX
from detectors.anomalib_models import canonical_name
from detectors.atomic import atomic_write
from detectors.backbones import check_backbone
from detectors.device import resolve_device
from detectors.errors import InputError
from detectors.registry import available, detector_class
from features import FolderSegments, KMeansSegments, SegmentSpec, make_segmenter
from features.vector import feature_matrix, feature_names, join_features
from segad.baselines import (
    BaselineRun,
    check_good_images,
    fit_seed,
    generated_images,
    good_training_images,
    parse_supervised,
)
from segad.calibration import Calibration, calibrate, check_target_fpr, out_of_fold_scores
from segad.classifier import PRESETS, SegadClassifier
from segad.crossfit import STACK_FOLDS, SeedMaps, SupervisedInput, check_stackable, cross_fit
from segad.data import Dataset, DatasetError, Sample, load_dataset
from segad.data.images import INTENSITIES, check_intensity
from segad.data.shapes import SourceShape, source_shapes
from segad.defects import generate_defects
from segad.evaluate import MethodResult, format_table, good_moments
from segad.mapfolder import MapFolder, parse_maps
from segad.maps import DetectorMaps, ImageSet, default_cache
from segad.paths import cache_root, check_writable_dir
from segad.pipeline import SegadPipeline
from segad.protocol import FitSplit, SeedSplit, check_evaluable, fit_split, seed_split, seeds, tuning_defects
from segad.selection import CLASSIFIER, Selection, choice_summary, ensemble_score, select
from segad.sources import FittedDetector, FolderMaps, MapRequest, MapSource
from segad.supervised import SUPERVISED, SupervisedConfig

GENERATED_SEED = 0
KMEANS_FIT_IMAGES = 64
MIN_IMAGE_SIZE = 32  # the backbones' coarsest feature stride: smaller images give no feature map


@dataclass(frozen=True)
class TrainConfig:
    """Every option of a run, flat, so it logs as params and prints as the run's record."""

    data: str = "elpv"
    category: str | None = None
    detectors: str = ",".join(DEFAULT_DETECTORS)
    backbone: str = DEFAULT_BACKBONE
    image_size: int = 256
    intensity: str = "none"  # per-image brightness adjustment before the backbone: none, standardise, clahe
    shots: int = 10
    generated: int = 0
    holdout: float = 0.1  # share of train/good held out from the detectors for the classifier (SegAD: 10%)
    target_fpr: float = 0.01  # the saved model's threshold: this FPR on unseen good images (calibrated out of fold)
    seeds: int = 10
    tuning_share: float = 0.0  # share of the test defects reserved for segad.tune: no seed trains or tests on them
    segments: str = "auto"  # auto: the dataset's own segment maps when it has them, else kmeans:8
    classifier: str = "brf"
    feature_set: str = "full"  # full: SegAD's statistics + image scores; no_scores: the statistics alone
    classifier_params: str = ""  # overrides of the preset, "max_depth=4,learning_rate=0.2" (set by tuning)
    classifier_start: str = "zero"  # zero: SegAD's forest; ensemble: boosted from the ensemble's score
    device: str = "auto"
    model_dir: str | None = None
    summary_json: str | None = None
    no_cache: bool = False
    experiment: str | None = None  # MLflow experiment (default: segad-<data>-<category>)
    tracking_uri: str | None = None  # default: MLflow's own (MLFLOW_TRACKING_URI, else ./mlflow.db)
    run_name: str | None = None
    no_mlflow: bool = False
    detector_options: str = ""  # "patchcore.coreset_ratio=0.1,padim.n_features=50,devnet.epochs=5"
    supervised: str = ""  # supervised baselines fit per seed next to SegAD: "devnet"
    supervised_good: str = "all"  # their good images: all (the papers') or holdout (SegAD's classifier's)
    stack_folds: int = STACK_FOLDS  # folds a stacked supervised input (--detectors devnet) is cross-fitted over
    maps: str = ""  # inputs computed elsewhere: "anomalib_patchcore=exported/,efficientad=maps/" (segad.mapfolder)

    @property
    def supervised_names(self) -> list[str]:
        return parse_supervised(self.supervised)

    @property
    def map_folders(self) -> dict[str, Path]:
        """Inputs whose maps another tool computed (``--maps NAME=DIR``), by name."""
        folders = parse_maps(self.maps)
        for name in folders:
            if name in available() or name in SUPERVISED:
                raise InputError(
                    f"--maps {name}=...: {name} names one of segad's own models; call the folder's detector "
                    f"something else, e.g. --maps anomalib_{name}={folders[name]}"
                )
        return folders

    @property
    def detector_names(self) -> list[str]:
        """SegAD's inputs in feature order: the one-class inputs (detectors and ``--maps`` folders, a folder
        not named in ``--detectors`` after them), then the stacked supervised ones."""
        names = [canonical_name(n.strip()) for n in self.detectors.split(",") if n.strip()]
        if not names:
            raise InputError("--detectors names no detector; e.g. --detectors patchcore,padim")
        if len(set(names)) != len(names):
            raise InputError(f"--detectors {self.detectors}: a detector is named twice")
        folders = self.map_folders
        names += [n for n in folders if n not in names]
        registry = available()
        for n in names:
            if n in SUPERVISED:
                check_stackable(n)
            elif n.startswith(ANOMALIB_PREFIX) and n not in folders:
                detector_class(n)  # registers anomalib's model, or says how to install anomalib
            elif n not in registry and n not in folders:
                stackable = ", ".join(m for m, c in SUPERVISED.items() if c.stackable)
                raise InputError(
                    f"--detectors: unknown detector {n!r}; one-class: {', '.join(sorted(registry))}; "
                    f"supervised, stacked per seed: {stackable}; anomalib's models: anomalib:Patchcore etc.; or maps "
                    f"computed elsewhere: --maps {n}=DIR"
                )
        oneclass = [n for n in names if n not in SUPERVISED]
        if not oneclass:
            raise InputError(
                f"--detectors {self.detectors}: SegAD stacks one-class detectors' maps, with a supervised model's "
                f"beside them; add one (e.g. patchcore), or give --supervised {self.detectors} for its own row"
            )
        return oneclass + [n for n in names if n in SUPERVISED]

    @property
    def oneclass_names(self) -> list[str]:
        """The inputs computed once on good images and shared by every seed: segad's one-class detectors
        (maps cached) and ``--maps`` folders."""
        return [n for n in self.detector_names if n not in SUPERVISED]

    @property
    def fitted_names(self) -> list[str]:
        """The one-class detectors segad fits itself."""
        return [n for n in self.oneclass_names if n in available()]

    @property
    def stacked_names(self) -> list[str]:
        """The supervised inputs (``devnet``, ``dra``): fit per seed on its shots, cross-fitted (segad.crossfit)."""
        return [n for n in self.detector_names if n in SUPERVISED]

    def classifier_overrides(self) -> dict[str, float | int]:
        out: dict[str, float | int] = {}
        for key, value in parse_assignments(self.classifier_params, "--classifier-params", "max_depth=4"):
            try:
                out[key] = int(value) if value.lstrip("-").isdigit() else float(value)
            except ValueError:
                raise InputError(f"--classifier-params {key}={value}: {value} is not a number") from None
        return out

    def _options(self) -> dict[str, dict[str, str]]:
        """``--set`` options by method: every chosen detector and supervised baseline, checked."""
        options: dict[str, dict[str, str]] = {n: {} for n in [*self.supervised_names, *self.detector_names]}
        for key, value in parse_assignments(self.detector_options, "--set", "patchcore.coreset_ratio=0.1"):
            det, dot, option = key.rpartition(".")
            det = canonical_name(det)
            if not dot:
                raise InputError(f"--set {key}={value}: use DETECTOR.OPTION=VALUE, e.g. patchcore.coreset_ratio=0.1")
            if det in self.map_folders:
                raise InputError(f"--set {key}={value}: {det}'s maps come from a folder (--maps); it has no options")
            model = SUPERVISED[det] if det in SUPERVISED else detector_class(det)
            known = {f.name for f in fields(model.config_class)}
            if option not in known:
                listing = ", ".join(sorted(known))
                raise InputError(f"--set {key}={value}: {det} has no option {option!r}; options: {listing}")
            if det not in options:
                chosen = f"--detectors {self.detectors}"
                chosen = f"--supervised {self.supervised!r} or {chosen}" if det in SUPERVISED else chosen
                raise InputError(f"--set {key}={value}: {det} is not among {chosen}; add it or drop the option")
            options[det][option] = value
        return options

    def _configs(self, names: Sequence[str], model_class) -> dict:
        options = self._options()
        run = {"backbone": self.backbone, "device": self.device}
        return {n: model_class(n).config_class.from_params({**run, **options[n]}) for n in names}

    def detector_configs(self) -> dict[str, DetectorConfig]:
        """Each detector segad fits: backbone and device from the run, then its ``--set`` options."""
        return self._configs(self.fitted_names, detector_class)

    def supervised_configs(self) -> dict[str, SupervisedConfig]:
        """Each supervised model's config (a baseline's row or a stacked input), as the detectors'; its
        training seed is each split's seed."""
        names = [*self.supervised_names, *(n for n in self.stacked_names if n not in self.supervised_names)]
        return self._configs(names, SUPERVISED.__getitem__)


def parse_assignments(text: str, flag: str, example: str) -> list[tuple[str, str]]:
    """``"a=1,b.c=2"`` -> ``[("a", "1"), ("b.c", "2")]``, with an error that names the flag."""
    out = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"{flag} {item!r}: use NAME=VALUE, e.g. {example}")
        out.append((key.strip(), value.strip()))
    return out


@dataclass(frozen=True)
class TrainResult:
    config: TrainConfig
    dataset_table: Dataset
    methods: list[MethodResult]
    detector_maps: dict[str, DetectorMaps]
    seconds: float
    pipeline: SegadPipeline
    first_seed_test: np.ndarray  # indices into dataset_table.test of the first seed's test set
    first_seed_scores: dict[str, np.ndarray]  # method -> scores on that set
    feature_importances: np.ndarray  # mean over seeds, in pipeline.feature_names order
    deployments: list[Deployment]  # per seed: its model's calibrated threshold on its test set; [0] is saved
    selections: list[Selection]  # per seed: the final score chosen on the training rows, and why
    baselines: tuple[BaselineRun, ...] = ()  # supervised baselines (--supervised), fit per seed

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.methods[0].per_seed]

    @property
    def deployment(self) -> Deployment:
        """The saved model's (the first seed's)."""
        return self.deployments[0]

    @property
    def dataset(self) -> str:
        return f"{self.dataset_table.name}/{self.dataset_table.category}"

    def summary(self) -> dict:
        return {
            "methods": {m.name: m.to_dict() for m in self.methods},
            "config": asdict(self.config),
            "dataset": self.dataset,
            "seconds": round(self.seconds, 1),
            "deploy": self.deployment.to_dict(),
            "deploy_per_seed": [
                {"fpr": d.fpr, "tpr": d.tpr, "threshold": d.calibration.threshold} for d in self.deployments
            ],
            "selection": [
                {
                    "seed": sp_seed,
                    "chosen": sel.blend.label,
                    "base_weights": sel.blend.base_weights,
                    "inner_auroc": sel.inner_auroc,
                }
                for sp_seed, sel in zip(self.seeds, self.selections, strict=True)
            ],
            "supervised": {b.name: b.summary() for b in self.baselines},
            "detectors": {
                name: {
                    "fit_seconds": round(dm.fit_seconds, 2),
                    "predict_ms_per_image": None if np.isnan(dm.predict_ms_per_image) else dm.predict_ms_per_image,
                    "cached_maps": dm.cached_maps,
                }
                for name, dm in self.detector_maps.items()
            },
        }


@dataclass(frozen=True)
class Deployment:
    """What the saved model's threshold does on the first seed's test set, which its classifier never saw."""

    calibration: Calibration
    fpr: float  # share of the test good images flagged
    tpr: float  # share of the test defects flagged
    n_good: int
    n_defects: int

    @classmethod
    def measure(cls, calibration: Calibration, labels: np.ndarray, scores: np.ndarray) -> Deployment:
        flagged = scores >= calibration.threshold
        good, bad = labels == 0, labels == 1
        return cls(
            calibration, float(flagged[good].mean()), float(flagged[bad].mean()), int(good.sum()), int(bad.sum())
        )

    def to_dict(self) -> dict:
        return {
            "fpr": self.fpr,
            "tpr": self.tpr,
            "n_good": self.n_good,
            "n_defects": self.n_defects,
            **self.calibration.to_params(),
        }


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def resolve_segments(cfg: TrainConfig, ds: Dataset) -> SegmentSpec:
    if cfg.segments == "auto":
        return SegmentSpec("folder") if ds.has_segments else SegmentSpec("kmeans", 8)
    return SegmentSpec.parse(cfg.segments)


def segment_paths(spec: SegmentSpec, ds: Dataset, samples: Sequence[Sample]) -> list[Path | None] | None:
    """Each sample's segment map for ``folder`` segments, checked before any long work starts."""
    if spec.method != "folder":
        return None
    if spec.path is None:
        paths = [s.segment_path for s in samples]
        missing = [str(s.image_path) for s, p in zip(samples, paths, strict=True) if p is None]
        if missing:
            raise DatasetError(
                f"--segments folder: {ds.name}/{ds.category} has no segment map for {len(missing)} images, "
                f"e.g. {missing[0]}; give --segments folder:PATH, kmeans:K or whole"
            )
        return paths
    root = Path(spec.path)
    out, missing = [], []
    for s in samples:
        nested = root / str(s.split) / s.defect_type / f"{s.stem}.png"
        flat = root / f"{s.stem}.png"
        p = nested if nested.is_file() else flat if flat.is_file() else None
        if p is None:
            missing.append(str(nested))
        out.append(p)
    if missing:
        shown = "\n  ".join(missing[:10])
        raise DatasetError(f"--segments {spec}: {len(missing)} segment maps are missing, e.g.\n  {shown}")
    return out


@dataclass
class Prepared:
    """Everything up to the anomaly maps, shared by ``segad.train`` and ``segad.tune``."""

    ds: Dataset
    splits: list[SeedSplit]
    fs: FitSplit
    spec: SegmentSpec
    size: tuple[int, int]
    fit_set: ImageSet
    score_set: ImageSet  # held-out good images, then the test images
    seg_paths: list[Path | None] | None
    gen_set: ImageSet
    gen_seg_paths: list[Path | None] | None
    gen_sources: np.ndarray  # each generated defect's source: an index into the held-out good images
    maps: dict[str, DetectorMaps]
    gen_maps: dict[str, DetectorMaps]
    source: SourceShape  # the training images' native sizes, kept in the model for segad.predict's notes

    @property
    def n_hold(self) -> int:
        return len(self.fs.holdout_good)

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.ds.test])

    def training_scores(
        self, sp: SeedSplit, n_gen: int, stacked: Mapping[str, SeedMaps] | None = None
    ) -> dict[str, np.ndarray]:
        """Each input's image scores on the classifier's rows for one seed, in ``training_rows`` order:
        the cached detectors', then the seed's ``stacked`` supervised inputs' (out of fold)."""
        n_hold = self.n_hold
        scores = {n: (dm.scores, self.gen_maps[n].scores if n_gen else None) for n, dm in self.maps.items()}
        for n, sm in (stacked or {}).items():
            scores[n] = sm.scores_on(len(self.score_set)), sm.gen_scores
        out = {}
        for name, (s, gen) in scores.items():
            gen = gen[:n_gen] if n_gen else np.empty(0, np.float32)
            out[name] = np.concatenate([s[:n_hold], s[n_hold:][sp.train_defects], gen])
        return out

    def training_rows(
        self, X: np.ndarray, X_gen: np.ndarray, sp: SeedSplit
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The classifier's rows for one seed (held-out good, the seed's shots, generated defects), their
        labels, and their groups: a generated defect shares its source good image's group."""
        n_hold, shots = self.n_hold, len(sp.train_defects)
        X_train = np.concatenate([X[:n_hold], X[n_hold:][sp.train_defects], X_gen])
        y = np.r_[np.zeros(n_hold), np.ones(shots + len(X_gen))].astype(int)
        groups = np.r_[np.arange(n_hold), n_hold + np.arange(shots), self.gen_sources[: len(X_gen)]]
        return X_train, y, groups


def maps_fit_split(ds: Dataset, folders: Mapping[str, MapFolder], fits_own: bool) -> FitSplit:
    """With maps computed elsewhere, the held-out good images are the good training images those maps
    cover (the other tool's detector was not fit on them), the same in every folder; segad's own
    detectors fit on the rest."""
    covered = {n: {s.image_path for s in f.covers(ds.train_good)} for n, f in folders.items()}
    first, hold = next(iter(covered.items()))
    for name, other in covered.items():
        if other != hold:
            odd = sorted(str(p.name) for p in other ^ hold)
            raise DatasetError(
                f"--maps {first} and {name} hold maps of different good training images ({len(odd)} differ, e.g. "
                f"{', '.join(odd[:3])}): SegAD's classifier trains on the good images no detector was fit on, so "
                "every folder must have maps of the same held-out good images"
            )
    if not hold:
        raise DatasetError(
            f"--maps {first}={folders[first].root}: no maps of good training images (train/good/...). SegAD's "
            "classifier trains on good images the detector was not fit on: hold some out of its fit (SegAD holds out "
            "10%) and export their maps too"
        )
    fit = tuple(s for s in ds.train_good if s.image_path not in hold)
    if fits_own and not fit:
        raise DatasetError(
            f"--maps {first}: its maps cover all {len(hold)} good training images, so segad's detectors have none "
            "left to fit on; give maps only of the good images held out of the other detector's fit"
        )
    return FitSplit(fit, tuple(s for s in ds.train_good if s.image_path in hold))


def prepare(cfg: TrainConfig, stacking: str = "") -> Prepared:
    """Validate everything that can fail before long work, then fit detectors and compute (or load) maps.
    ``stacking``: the name of a caller that cannot stack supervised inputs (an experiment), to refuse them."""
    configs = cfg.detector_configs()  # unknown detectors or options fail here
    if stacking and cfg.stacked_names:
        raise InputError(
            f"{stacking} compares the cached one-class detectors only; drop {','.join(cfg.stacked_names)} from "
            "--detectors (segad.train and segad.tune stack them)"
        )
    supervised = cfg.supervised_configs()  # and unknown baselines or their options
    check_good_images(cfg.supervised_good)
    SegadClassifier(cfg.classifier, **cfg.classifier_overrides())  # a bad preset fails here
    if cfg.classifier_start not in ("zero", "ensemble"):
        raise InputError(f"--classifier-start must be zero or ensemble, got {cfg.classifier_start!r}")
    if cfg.classifier_start == "ensemble" and cfg.classifier == "logreg":
        raise InputError("--classifier-start ensemble needs a forest (--classifier brf, rf or bt), not logreg")
    if cfg.feature_set not in ("full", "no_scores"):
        raise InputError(f"--feature-set must be full or no_scores, got {cfg.feature_set!r}")
    check_intensity(cfg.intensity)
    check_target_fpr(cfg.target_fpr)
    if cfg.image_size < MIN_IMAGE_SIZE:
        raise InputError(
            f"--image-size must be at least {MIN_IMAGE_SIZE} pixels (the backbone's coarsest stride), "
            f"got {cfg.image_size}"
        )
    if not 0.0 < cfg.holdout < 1.0:
        raise InputError(
            f"--holdout must be in (0, 1), got {cfg.holdout}: SegAD's classifier trains on held-out good images "
            "(SegAD holds out 0.1)"
        )
    resolve_device(cfg.device)  # --device cuda without a GPU fails here, not at the first fit
    for backbone in sorted({cfg.backbone, *(c.backbone for c in [*configs.values(), *supervised.values()])}):
        check_backbone(backbone)  # missing torchvision weights fail here, not after the dataset is read
    check_writable_dir(cfg.model_dir or Path("outputs") / "models", "--model-dir")
    if cfg.summary_json:
        check_writable_dir(Path(cfg.summary_json).parent, "--summary-json")
    if not cfg.no_cache:
        check_writable_dir(cache_root(), "the map cache ($SEGAD_CACHE_DIR)")
    if cfg.generated < 0:
        raise InputError(f"--generated must be >= 0, got {cfg.generated}")
    if cfg.stack_folds < 2:
        raise InputError(f"--stack-folds must be at least 2 (a fit per fold), got {cfg.stack_folds}")
    ds: Dataset = load_dataset(cfg.data, cfg.category)
    check_evaluable(ds)
    source = SourceShape.of(source_shapes([s.image_path for s in ds.train_good], "training images"))
    source_shapes([s.image_path for s in ds.test], "test images")  # a tiny test image gets the same warning
    reserved = tuning_defects(ds, cfg.tuning_share)
    splits = [seed_split(ds, cfg.shots, s, reserved) for s in seeds(cfg.seeds)]  # bad --shots fails before any fit
    if cfg.shots == 0 and cfg.generated == 0:
        raise InputError("--shots 0 (one-class) needs generated defects to train on: add e.g. --generated 50")
    folders = {n: MapFolder.open(n, d, ds.category) for n, d in cfg.map_folders.items()}
    fs = maps_fit_split(ds, folders, bool(configs)) if folders else fit_split(ds, cfg.holdout)
    if not fs.holdout_good:
        raise DatasetError(f"{ds.name}/{ds.category}: too few good training images to hold any out for SegAD")
    if cfg.stacked_names and (cfg.shots < 2 or len(fs.holdout_good) < 2):
        raise InputError(
            f"--detectors {','.join(cfg.stacked_names)}: a stacked input is cross-fitted over the classifier's rows, "
            f"so each fold's fit learns from the shots and held-out good images outside it: it needs --shots >= 2 "
            f"and 2 held-out good images (got --shots {cfg.shots}, {len(fs.holdout_good)}; raise --holdout)"
        )
    spec = resolve_segments(cfg, ds)
    scored = list(fs.holdout_good) + list(ds.test)
    seg_paths = segment_paths(spec, ds, scored)  # folder maps that do not match fail here
    _log(ds.summary())
    _log(f"detectors fit on {len(fs.fit_good)} good images; {len(fs.holdout_good)} held out for SegAD")

    size = (cfg.image_size, cfg.image_size)
    fit_set = ImageSet.from_paths([s.image_path for s in fs.fit_good], size, cfg.intensity)
    score_set = ImageSet.from_paths([s.image_path for s in scored], size, cfg.intensity)
    gen_set, gen_seg_paths, gen_sources = _generated_defects(cfg, fs, seg_paths, size)
    cache = None if cfg.no_cache else default_cache()
    request = MapRequest(fit_set, score_set, scored, gen_set, size, cache)
    sources: dict[str, MapSource] = {n: FolderMaps(f) for n, f in folders.items()}
    sources |= {n: FittedDetector(n, c) for n, c in configs.items()}
    for src in sources.values():  # every folder's maps read and checked before any fit
        src.check(request)
    maps: dict[str, DetectorMaps] = {}
    gen_maps: dict[str, DetectorMaps] = {}
    for name in cfg.oneclass_names:
        maps[name], gen = sources[name].maps(request, _log)
        if gen is not None:
            gen_maps[name] = gen
    return Prepared(
        ds,
        splits,
        fs,
        spec,
        size,
        fit_set,
        score_set,
        seg_paths,
        gen_set,
        gen_seg_paths,
        gen_sources,
        maps,
        gen_maps,
        source,
    )


def segment(prep: Prepared, segmenter) -> tuple[np.ndarray, np.ndarray | None]:
    """Segment maps of the scored images and of the generated defects (None when there are none)."""
    gen = _segments(segmenter, prep.gen_set, prep.gen_seg_paths) if len(prep.gen_set) else None
    return _segments(segmenter, prep.score_set, prep.seg_paths), gen


def pooled(
    inputs: Mapping[str, tuple[np.ndarray, np.ndarray]], segments: np.ndarray, k: int, with_scores: bool
) -> np.ndarray:
    """Feature rows from each input's ``(maps, scores)`` on the same images, in ``inputs``' order."""
    maps, scores = {n: m for n, (m, _) in inputs.items()}, {n: s for n, (_, s) in inputs.items()}
    return feature_matrix(maps, scores, segments, k, with_scores=with_scores)


def features(
    prep: Prepared, names: Sequence[str], seg: np.ndarray, gen_seg: np.ndarray | None, k: int, with_scores: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Feature rows of the scored images and of the generated defects, for the detectors ``names``."""
    X = pooled({n: (prep.maps[n].maps, prep.maps[n].scores) for n in names}, seg, k, with_scores)
    if gen_seg is None:
        return X, np.empty((0, X.shape[1]))
    gen = {n: (prep.gen_maps[n].maps, prep.gen_maps[n].scores) for n in names}
    return X, pooled(gen, gen_seg, k, with_scores)


def stacked_features(
    prep: Prepared,
    stacked: Mapping[str, SeedMaps],
    seg: np.ndarray,
    gen_seg: np.ndarray | None,
    k: int,
    with_scores: bool,
    shared: tuple[np.ndarray, np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """One seed's feature rows: the cached detectors' (``shared``, every seed's) joined with its stacked
    inputs' in the pipeline's layout; NaN on the scored images this seed never reads."""
    if not stacked:
        return shared
    X, X_gen = shared
    rows = next(iter(stacked.values())).rows
    part = pooled({n: (sm.maps, sm.scores) for n, sm in stacked.items()}, seg[rows], k, with_scores)
    X_stacked = np.full((len(X), part.shape[1]), np.nan)
    X_stacked[rows] = part
    X_gen_stacked = np.empty((0, part.shape[1]))
    if gen_seg is not None:
        X_gen_stacked = pooled({n: (sm.gen_maps, sm.gen_scores) for n, sm in stacked.items()}, gen_seg, k, with_scores)
    m_shared, m_stacked = len(prep.maps), len(stacked)
    return (
        join_features([(X, m_shared), (X_stacked, m_stacked)], with_scores),
        join_features([(X_gen, m_shared), (X_gen_stacked, m_stacked)], with_scores),
    )


def run(cfg: TrainConfig) -> TrainResult:
    t0 = time.perf_counter()
    # 1. images -> detectors -> anomaly maps (cached)
    prep = prepare(cfg)
    stacked = cfg.stacked_names  # supervised inputs: fit per seed, so their maps and features are too
    names = [*prep.maps, *stacked]

    # 2. segments -> 3. per-segment features (the cached detectors' once; a stacked input's per seed)
    segmenter = _fit_segmenter(make_segmenter(prep.spec, cfg.backbone, cfg.device), prep)
    k = segmenter.n_segments_
    with_scores = cfg.feature_set == "full"
    seg, gen_seg = segment(prep, segmenter)
    shared = features(prep, list(prep.maps), seg, gen_seg, k, with_scores)
    n_features = len(feature_names(names, k, with_scores))
    _log(f"segments: {prep.spec} ({k}); {n_features} features per image; {len(shared[1])} generated defects")

    # 4. classifier per seed -> scores -> metrics
    n_hold, labels = prep.n_hold, prep.labels
    # Supervised models: fit per seed on the good images and that seed's shots (segad.baselines), as a
    # row of their own (--supervised) or as SegAD's inputs, cross-fitted (--detectors devnet; segad.crossfit).
    sup_configs = cfg.supervised_configs()
    baselines = {n: BaselineRun(n, c, check_good_images(cfg.supervised_good), []) for n, c in sup_configs.items()}
    rows = [b.row for b in baselines.values() if b.row not in names]
    results = {n: MethodResult(n) for n in [*names, "ensemble", "segad", CLASSIFIER, *rows]}
    normal = good_training_images(prep, cfg.supervised_good) if baselines else None
    generated = generated_images(prep) if baselines else None
    from_ensemble = cfg.classifier_start == "ensemble"
    first_clf, first_scores, importances, blend, first_inputs = None, {}, [], None, {}
    selections: list[Selection] = []
    deployments: list[Deployment] = []
    for sp in prep.splits:
        y = labels[sp.test]
        fits = fit_seed(sup_configs, prep, sp, normal, generated, _log, unscored=stacked)
        seed_maps = {n: cross_fit(fits[n][1], prep, sp, normal, generated, cfg.stack_folds, _log) for n in stacked}
        all_scores = {n: prep.maps[n].scores for n in prep.maps}
        all_scores |= {n: sm.scores_on(len(prep.score_set)) for n, sm in seed_maps.items()}
        for n, sm in seed_maps.items():
            fit, model = fits[n]
            fits[n] = replace(fit, scores=all_scores[n][n_hold:][sp.test], fold_seconds=sm.fold_seconds), model
        X, X_gen = stacked_features(prep, seed_maps, seg, gen_seg, k, with_scores, shared)
        X_test = X[n_hold:]
        # z-scores against the held-out good images: the naive ensemble, and every blend's reference
        moments = {n: good_moments(all_scores[n][:n_hold]) for n in names}
        ensemble = ensemble_score({n: all_scores[n][n_hold:][sp.test] for n in names}, moments)
        scores = {n: all_scores[n][n_hold:][sp.test] for n in names}
        scores["ensemble"] = ensemble
        X_train, y_train, groups = prep.training_rows(X, X_gen, sp)
        train_scores = prep.training_scores(sp, len(X_gen), seed_maps)

        def make_classifier(seed: int = sp.seed) -> SegadClassifier:
            return SegadClassifier(cfg.classifier, seed=seed, **cfg.classifier_overrides())

        # The forest may start from the ensemble score, as the table computes it.
        prior = ensemble_score(train_scores, moments) if from_ensemble else None
        test_prior = ensemble if from_ensemble else None
        clf = make_classifier().fit(X_train, y_train, prior)
        # 5. the final score, chosen on the training rows: the classifier's margins out of fold
        oof = out_of_fold_scores(make_classifier, X_train, y_train, groups, seed=sp.seed, prior=prior)
        real = np.r_[np.ones(n_hold + len(sp.train_defects), bool), np.zeros(len(X_gen), bool)]
        sel = select(oof, train_scores, y_train, real, moments, prefer_classifier=from_ensemble)
        selections.append(sel)
        margins = clf.decision_function(X_test[sp.test], test_prior)
        scores["segad"] = sel.blend.score(margins, scores)
        scores[CLASSIFIER] = margins
        for name, (fit, model) in fits.items():
            baselines[name].add(fit, model)
            scores[baselines[name].row] = fit.scores
        for method, s in scores.items():
            results[method].add(sp.seed, y, s)
        if np.ptp(clf.decision_function(X_train, prior)) == 0:
            _log(
                f"warning: seed {sp.seed}: the classifier learned nothing (constant output) from "
                f"{n_hold} good and {len(y_train) - n_hold} defect examples; add --generated or good images"
            )
        importances.append(clf.feature_importances())
        # Every seed's model gets the threshold the saved one gets: conformal on out-of-fold final scores
        # of its good rows; what it does on that seed's test set is the deployed FPR/TPR.
        calibration = calibrate(sel.blend.score(oof, train_scores), y_train, cfg.target_fpr)
        deployments.append(Deployment.measure(calibration, y, scores["segad"]))
        if first_clf is None:  # the saved model
            first_clf, first_scores, blend = clf, scores, sel.blend
            first_inputs = {n: SupervisedInput(fits[n][1]) for n in stacked}
            if np.ptp(blend.score(clf.decision_function(X_train, prior), train_scores)) == 0:
                # A constant score flags every image or none: saving or registering it would ship a model
                # that cannot tell a defect from a good image, with a threshold that looks valid.
                raise InputError(
                    f"the model learned nothing: its final score ({blend.label}) is the same for all "
                    f"{n_hold} good and {len(y_train) - n_hold} defect training images of seed {sp.seed}, so "
                    "nothing is saved; check that the images differ, add --shots or --generated defects"
                )
            if not calibration.meets_target:
                _log(
                    f"warning: {calibration.n_good} held-out good images can promise FPR <= "
                    f"{calibration.guaranteed_fpr:.3f}, not --target-fpr {cfg.target_fpr}; the threshold is the "
                    f"strictest they support (raise --holdout for a tighter one)"
                )
    _log("final score per seed (chosen on training rows): " + choice_summary(selections))

    pipeline = SegadPipeline(
        [*(prep.maps[n].detector for n in prep.maps), *first_inputs.values()],
        segmenter,
        first_clf,
        prep.size,
        intensity=cfg.intensity,
        threshold=deployments[0].calibration.threshold,
        blend=blend,
        source=prep.source,
        info={
            "dataset": f"{prep.ds.name}/{prep.ds.category}",
            "segments": str(prep.spec),
            "trained_on_seed": prep.splits[0].seed,
        },
        with_scores=with_scores,
    )
    return TrainResult(
        cfg,
        prep.ds,
        list(results.values()),
        prep.maps,
        time.perf_counter() - t0,
        pipeline,
        prep.splits[0].test,
        first_scores,
        np.mean(importances, axis=0),
        deployments,
        selections,
        tuple(baselines.values()),
    )


def _generated_defects(cfg: TrainConfig, fs, seg_paths, size):
    """Defects generated on the held-out good images (a fixed draw, so their maps cache too)."""
    if cfg.generated == 0:
        return ImageSet((), lambda idx: np.empty((0, 3, *size), np.float32)), None, np.empty(0, np.int64)
    from segad.data.images import adjust_intensity, load_segments, normalise, read_rgb, resize

    raw = [resize(read_rgb(s.image_path), size) for s in fs.holdout_good]
    n_hold = len(fs.holdout_good)
    src_paths = seg_paths[:n_hold] if seg_paths is not None else None
    segs = [load_segments(p, size) for p in src_paths] if src_paths else [np.ones(size, np.int32)] * n_hold
    made = generate_defects(raw, segs, cfg.generated, seed=GENERATED_SEED)
    # Defects are drawn on the raw image, as a real one would be; then the image is adjusted like any other.
    arrays = np.stack([normalise(adjust_intensity(d.image, cfg.intensity)) for d in made])
    # A generated image keeps its source's component map (folder segments); kmeans re-segments it.
    gen_seg_paths = [src_paths[d.source] for d in made] if src_paths else None
    return ImageSet.from_arrays(arrays), gen_seg_paths, np.array([d.source for d in made], np.int64)


def _fit_segmenter(segmenter, prep: Prepared):
    if isinstance(segmenter, KMeansSegments):
        n = min(len(prep.fit_set), KMEANS_FIT_IMAGES)
        idx = np.random.default_rng(0).choice(len(prep.fit_set), n, replace=False)
        return segmenter.fit(prep.fit_set.load(sorted(idx.tolist())))
    if isinstance(segmenter, FolderSegments):
        return segmenter.fit([p for p in prep.seg_paths if p is not None])
    return segmenter.fit()


def _segments(segmenter, images: ImageSet, paths, chunk: int = 64) -> np.ndarray:
    out = []
    for s in range(0, len(images), chunk):
        idx = list(range(s, min(s + chunk, len(images))))
        out.append(segmenter.predict(images.load(idx), None if paths is None else [paths[i] for i in idx]))
    return np.concatenate(out)


def write_json(path: str | Path, payload: dict) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(payload, indent=2)))


def build_parser(prog: str = "python -m segad.train", description: str | None = __doc__) -> argparse.ArgumentParser:
    """The options every command that trains shares (``segad.tune`` adds its own)."""
    ap = argparse.ArgumentParser(prog=prog, description=description)
    d = TrainConfig()
    ap.add_argument(
        "--data", default=d.data, help="dataset root (MVTec or VisA layout) or a built-in: elpv, synthetic, textures"
    )
    ap.add_argument(
        "--category",
        default=d.category,
        help="category inside the dataset (elpv: mono, poly or dra; synthetic: widget or complex; "
        "textures: brick, gravel or grass)",
    )
    ap.add_argument(
        "--detectors",
        default=d.detectors,
        help=f"comma-separated base detectors, from: {', '.join(available())}; or a supervised model with a map "
        "(devnet, dra), fit per seed on its shots and cross-fitted",
    )
    ap.add_argument(
        "--maps",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="stack maps another tool computed as the input NAME (repeatable): DIR in the dataset's layout "
        "(<split>/<type>/<stem>.npy|.tiff|.png, optional scores.csv) or SegAD's (df_training.csv, df_test.csv); "
        "its good training images' maps are the held-out ones",
    )
    ap.add_argument("--backbone", default=d.backbone)
    ap.add_argument("--image-size", type=int, default=d.image_size)
    ap.add_argument(
        "--intensity",
        default=d.intensity,
        choices=INTENSITIES,
        help="per-image brightness adjustment before the backbone (standardise, clahe: local equalisation)",
    )
    ap.add_argument("--shots", type=int, default=d.shots, help="labelled defects per seed for the classifier")
    ap.add_argument("--generated", type=int, default=d.generated, help="generated defects added to its training set")
    ap.add_argument("--seeds", type=int, default=d.seeds, help="how many of SegAD's 10 seeds to run")
    ap.add_argument("--holdout", type=float, default=d.holdout, help="share of good training images kept for SegAD")
    ap.add_argument(
        "--target-fpr",
        type=float,
        default=d.target_fpr,
        help="the saved model's false-alarm rate on unseen good images",
    )
    ap.add_argument(
        "--tuning-share",
        type=float,
        default=d.tuning_share,
        help="test defects reserved for tuning (set by segad.tune)",
    )
    ap.add_argument("--segments", default=d.segments, help="auto, whole, kmeans:K or folder[:PATH]")
    ap.add_argument(
        "--classifier", default=d.classifier, choices=tuple(PRESETS), help="brf (SegAD's), rf, bt, or logreg (linear)"
    )
    ap.add_argument("--feature-set", default=d.feature_set, choices=("full", "no_scores"))
    ap.add_argument("--classifier-params", default=d.classifier_params, help="preset overrides: max_depth=4,...")
    ap.add_argument(
        "--classifier-start",
        default=d.classifier_start,
        choices=("zero", "ensemble"),
        help="ensemble: boost the forest from the ensemble's score (it learns a correction); zero: SegAD's",
    )
    ap.add_argument(
        "--supervised",
        default=d.supervised,
        help=f"supervised few-shot baselines fit per seed next to SegAD, from: {', '.join(SUPERVISED)}",
    )
    ap.add_argument(
        "--supervised-good",
        default=d.supervised_good,
        choices=("all", "holdout"),
        help="the baselines' good images: all good training images (the papers') or SegAD's held-out ones",
    )
    ap.add_argument(
        "--stack-folds",
        type=int,
        default=d.stack_folds,
        help="folds a supervised input in --detectors (devnet, dra) is cross-fitted over: K extra fits per seed",
    )
    ap.add_argument("--device", default=d.device, choices=("auto", "cpu", "cuda"))
    ap.add_argument("--model-dir", default=d.model_dir, help="save the fitted pipeline here (default: outputs/...)")
    ap.add_argument("--summary-json", default=d.summary_json, help="write the results as JSON here")
    ap.add_argument("--no-cache", action="store_true", help="recompute detectors and maps, write nothing to the cache")
    ap.add_argument("--experiment", default=d.experiment, help="MLflow experiment (default: segad-<data>-<category>)")
    ap.add_argument("--tracking-uri", default=d.tracking_uri, help="MLflow store (default: MLflow's own, ./mlflow.db)")
    ap.add_argument("--run-name", default=d.run_name, help="name of the MLflow run")
    ap.add_argument("--no-mlflow", action="store_true", help="do not record the run in MLflow")
    ap.add_argument(
        "--set",
        dest="detector_options",
        action="append",
        default=[],
        metavar="DETECTOR.OPTION=VALUE",
        help="a detector's or baseline's option, e.g. --set patchcore.coreset_ratio=0.1 (repeatable)",
    )
    return ap


def config_from(values: dict) -> TrainConfig:
    known = {f.name for f in fields(TrainConfig)}
    values = {k: v for k, v in values.items() if k in known}
    values["detector_options"] = ",".join(values["detector_options"])
    values["maps"] = ",".join(values.get("maps", []))
    return TrainConfig(**values)


def parse_args(argv: Sequence[str] | None = None) -> TrainConfig:
    return config_from(vars(build_parser().parse_args(argv)))


def main(argv: Sequence[str] | None = None) -> int:
    from contextlib import nullcontext

    from segad import tracking

    cfg = parse_args(argv)
    try:
        with nullcontext() if cfg.no_mlflow else tracking.parent_run(cfg):
            result = run(cfg)
            if not cfg.no_mlflow:
                tracking.log_result(result)
    except InputError as e:  # the user's input: a message; anything else is a bug and keeps its traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"\n{result.dataset}: {cfg.shots} shots, {cfg.seeds} seeds, image size {cfg.image_size}")
    print(format_table(result.methods))
    dep = result.deployment
    print(
        f"saved model (seed {result.methods[0].per_seed[0].seed}): threshold {dep.calibration.threshold:.4g} flags "
        f"{dep.fpr:.1%} of {dep.n_good} test good images (target {cfg.target_fpr:.1%}) and {dep.tpr:.1%} of "
        f"{dep.n_defects} test defects"
    )
    print(f"({result.seconds:.0f} s)")
    if cfg.summary_json:
        write_json(cfg.summary_json, result.summary())
    model_dir = Path(cfg.model_dir or Path("outputs") / "models" / result.dataset.replace("/", "_"))
    result.pipeline.save(model_dir)
    for b in result.baselines:  # after the pipeline: its save replaces the whole folder
        b.model.save(model_dir / "baselines" / f"{b.name}.safetensors")
    print(f"model saved to {model_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
