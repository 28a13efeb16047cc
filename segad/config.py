"""A run's options: ``TrainConfig`` (flat, so it logs as MLflow params) and the command line that builds it.

``segad.train`` and ``segad.tune`` share the parser; each option is checked where it is used, before long work.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

from detectors import DEFAULT_BACKBONE, DEFAULT_DETECTORS, DetectorConfig
from detectors.anomalib_models import PREFIX as ANOMALIB_PREFIX
from detectors.anomalib_models import canonical_name
from detectors.errors import InputError
from detectors.registry import available, detector_class
from segad.baselines import (
    parse_supervised,
)
from segad.classifier import PRESETS
from segad.crossfit import STACK_FOLDS, check_stackable
from segad.data.images import INTENSITIES
from segad.judging import JUDGE_FOLDS
from segad.mapfolder import parse_maps
from segad.supervised import SUPERVISED, SupervisedConfig


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
    # Folds the detectors are cross-fitted over to judge the final score on (segad.judging); None: JUDGE_FOLDS when
    # every detector fits without training (PatchCore, PaDiM, ...), else 0 (judge on the held-out rows only).
    judge_folds: int | None = None
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


def build_parser(
    prog: str = "python -m segad.train", description: str | None = None, shots_list: bool = False
) -> argparse.ArgumentParser:
    """The options every command that trains shares (``segad.tune`` adds its own; ``segad.curve`` takes
    ``--shots`` as a list, ``shots_list``)."""
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
    if shots_list:
        ap.add_argument(
            "--shots", default="0,5,10,20,50", help="labelled defects per seed, one point each: 0,5,10,20,50"
        )
    else:
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
    ap.add_argument(
        "--judge-folds",
        type=int,
        default=d.judge_folds,
        help="choose the final score on every good training image, each mapped by a detector fit without it: "
        f"K extra fits per detector (0: on the held-out good images only; default {JUDGE_FOLDS} when no detector "
        "trains, else 0)",
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
