"""Everything before the classifier, shared by ``segad.train`` and ``segad.tune``: the checks that must
fail before long work, the split, the generated defects, and every input's anomaly maps (``MapSource``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detectors.anomalib_models import PREFIX as ANOMALIB_PREFIX
from detectors.backbones import check_backbone
from detectors.device import resolve_device
from detectors.errors import InputError
from detectors.registry import detector_class
from detectors.training import TrainableDetector
from features import SegmentSpec
from segad.baselines import check_good_images
from segad.calibration import check_target_fpr
from segad.classifier import SegadClassifier
from segad.config import TrainConfig
from segad.console import log
from segad.crossfit import SeedMaps
from segad.data import Dataset, DatasetError, load_dataset
from segad.data.images import check_intensity
from segad.data.shapes import SourceShape, source_shapes
from segad.defects import generate_defects
from segad.judging import JUDGE_FOLDS, JudgeMaps, cross_fit, judging_images
from segad.mapfolder import MapFolder
from segad.maps import DetectorMaps, ImageSet, default_cache
from segad.paths import cache_root, check_writable_dir
from segad.protocol import FitSplit, SeedSplit, check_evaluable, fit_split, seed_split, seeds, tuning_defects
from segad.segmenting import resolve_segments, segment_paths
from segad.sources import FittedDetector, FolderMaps, MapRequest, MapSource

GENERATED_SEED = 0
MIN_IMAGE_SIZE = 32  # the backbones' coarsest feature stride: smaller images give no feature map


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
    judge: JudgeMaps | None = None  # the detectors cross-fitted over their fit images (segad.judging), or None

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


@dataclass
class Plan:
    """What ``prepare`` has checked and decided before any detector is fit: the split, the images, and
    where each input's maps come from (``segad.shard`` fills the cache from the same plan)."""

    ds: Dataset
    splits: list[SeedSplit]
    fs: FitSplit
    spec: SegmentSpec
    seg_paths: list[Path | None] | None
    gen_seg_paths: list[Path | None] | None
    gen_sources: np.ndarray
    source: SourceShape
    request: MapRequest
    sources: dict[str, MapSource]


def prepare(cfg: TrainConfig, stacking: str = "") -> Prepared:
    """Validate everything that can fail before long work, then fit detectors and compute (or load) maps.
    ``stacking``: the name of a caller that cannot stack supervised inputs (an experiment), to refuse them."""
    p = plan(cfg, stacking)
    maps: dict[str, DetectorMaps] = {}
    gen_maps: dict[str, DetectorMaps] = {}
    for name in cfg.oneclass_names:
        maps[name], gen = p.sources[name].maps(p.request, log)
        if gen is not None:
            gen_maps[name] = gen
    r = p.request
    folds = judge_folds(cfg, p.sources, len(r.fit_set))
    judge = None
    if folds:
        judged = judging_images(len(p.fs.holdout_good), [sp.train_defects for sp in p.splits])
        judge = cross_fit(p.sources, r, folds, log, judged)  # type: ignore[arg-type]: all FittedDetector
    return Prepared(
        p.ds,
        p.splits,
        p.fs,
        p.spec,
        r.size,
        r.fit_set,
        r.score_set,
        p.seg_paths,
        r.gen_set,
        p.gen_seg_paths,
        p.gen_sources,
        maps,
        gen_maps,
        p.source,
        judge,
    )


def judge_folds(cfg: TrainConfig, sources: Mapping[str, MapSource], n_fit: int) -> int:
    """How many folds the detectors are cross-fitted over to judge the final score on (``segad.judging``):
    ``--judge-folds``, or by default ``JUDGE_FOLDS`` when every detector fits without training (a refit is
    seconds) and 0 when one trains (a refit is its whole schedule again) or when ``n_fit`` fit images
    are too few to leave a fold out."""
    if cfg.judge_folds is not None:
        return cfg.judge_folds
    if n_fit < 2 * JUDGE_FOLDS:
        return 0
    if cfg.stacked_names or not all(isinstance(s, FittedDetector) for s in sources.values()):
        return 0  # maps from a folder cannot be refit; a stacked input is cross-fitted per seed already
    # anomalib's models refit through its engine: minutes each, even its PatchCore (see README, Against anomalib)
    trains = [n for n in sources if n.startswith(ANOMALIB_PREFIX) or issubclass(detector_class(n), TrainableDetector)]
    if trains:
        log(
            f"judging the final score on the held-out good images only: {', '.join(trains)} train, and refitting "
            f"on {JUDGE_FOLDS} folds repeats a training {JUDGE_FOLDS} times; --judge-folds {JUDGE_FOLDS} does it anyway"
        )
        return 0
    return JUDGE_FOLDS


def plan(cfg: TrainConfig, stacking: str = "") -> Plan:
    """Every check that can fail before long work, the split, the images and each input's map source."""
    configs = cfg.detector_configs()  # unknown detectors or options fail here
    if stacking and cfg.stacked_names:
        raise InputError(
            f"{stacking} works on the cached one-class detectors only; drop {','.join(cfg.stacked_names)} from "
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
    # Every option naming a backbone (PFM's target_backbone too): missing torchvision weights fail here,
    # not after the dataset is read.
    named = {v for c in [*configs.values(), *supervised.values()] for k, v in c.to_params().items() if "backbone" in k}
    for backbone in sorted({cfg.backbone, *named} - {""}):
        check_backbone(backbone)
    check_writable_dir(cfg.model_dir or Path("outputs") / "models", "--model-dir")
    if cfg.summary_json:
        check_writable_dir(Path(cfg.summary_json).parent, "--summary-json")
    if not cfg.no_cache:
        check_writable_dir(cache_root(), "the map cache ($SEGAD_CACHE_DIR)")
    if cfg.generated < 0:
        raise InputError(f"--generated must be >= 0, got {cfg.generated}")
    if cfg.stack_folds < 2:
        raise InputError(f"--stack-folds must be at least 2 (a fit per fold), got {cfg.stack_folds}")
    if cfg.judge_folds is not None and (cfg.judge_folds == 1 or cfg.judge_folds < 0):
        raise InputError(
            f"--judge-folds must be 0 (judge on the held-out good images only) or at least 2, got {cfg.judge_folds}"
        )
    if cfg.judge_folds and (cfg.stacked_names or cfg.map_folders):
        raise InputError(
            f"--judge-folds {cfg.judge_folds}: only segad's own detectors can be refit without a fold; maps from "
            "--maps cannot, and a stacked supervised input is cross-fitted per seed already: drop --judge-folds"
        )
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
    if configs and not folders and cfg.judge_folds and len(fs.fit_good) < 2 * cfg.judge_folds:
        raise InputError(
            f"--judge-folds {cfg.judge_folds}: the detectors fit on {len(fs.fit_good)} good images, too few to refit "
            f"each without one of {cfg.judge_folds} folds; give --judge-folds 0 (judge on the held-out images only)"
        )
    if cfg.stacked_names and (cfg.shots < 2 or len(fs.holdout_good) < 2):
        raise InputError(
            f"--detectors {','.join(cfg.stacked_names)}: a stacked input is cross-fitted over the classifier's rows, "
            f"so each fold's fit learns from the shots and held-out good images outside it: it needs --shots >= 2 "
            f"and 2 held-out good images (got --shots {cfg.shots}, {len(fs.holdout_good)}; raise --holdout)"
        )
    spec = resolve_segments(cfg, ds)
    scored = list(fs.holdout_good) + list(ds.test)
    seg_paths = segment_paths(spec, ds, scored)  # folder maps that do not match fail here
    log(ds.summary())
    log(f"detectors fit on {len(fs.fit_good)} good images; {len(fs.holdout_good)} held out for SegAD")

    size = (cfg.image_size, cfg.image_size)
    fit_set = ImageSet.from_paths([s.image_path for s in fs.fit_good], size, cfg.intensity)
    score_set = ImageSet.from_paths([s.image_path for s in scored], size, cfg.intensity)
    gen_set, gen_seg_paths, gen_sources = generated_defects(cfg, fs, seg_paths, size)
    cache = None if cfg.no_cache else default_cache()
    request = MapRequest(fit_set, score_set, scored, gen_set, size, cache)
    sources: dict[str, MapSource] = {n: FolderMaps(f) for n, f in folders.items()}
    sources |= {n: FittedDetector(n, c) for n, c in configs.items()}
    for src in sources.values():  # every folder's maps read and checked before any fit
        src.check(request)
    return Plan(ds, splits, fs, spec, seg_paths, gen_seg_paths, gen_sources, source, request, sources)


def generated_defects(cfg: TrainConfig, fs, seg_paths, size):
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
