"""``python -m segad.train``: fit the base detectors, compare them over SegAD's seeds, print the table.

Runs SegAD's protocol (``segad.protocol``) on a dataset: every base detector alone and a naive
ensemble (mean of z-normalised detector scores), image AUROC and FPR@95TPR as mean ± std over seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from detectors import DEFAULT_BACKBONE, DEFAULT_DETECTORS, make_detector
from detectors.registry import detector_class
from segad.data import Dataset, DatasetError, load_dataset
from segad.evaluate import MethodResult, format_table, normalise_scores
from segad.maps import DetectorMaps, ImageSet, compute_maps, default_cache
from segad.protocol import check_evaluable, fit_split, seed_split, seeds


@dataclass(frozen=True)
class TrainConfig:
    """Every option of a run, flat, so it logs as params and prints as the run's record."""

    data: str = "elpv"
    category: str | None = None
    detectors: str = ",".join(DEFAULT_DETECTORS)
    backbone: str = DEFAULT_BACKBONE
    image_size: int = 256
    shots: int = 10
    seeds: int = 10
    device: str = "auto"
    summary_json: str | None = None
    no_cache: bool = False
    detector_options: str = ""  # "patchcore.coreset_ratio=0.1,padim.n_features=50"

    @property
    def detector_names(self) -> list[str]:
        names = [n.strip() for n in self.detectors.split(",") if n.strip()]
        if not names:
            raise ValueError("--detectors names no detector; e.g. --detectors patchcore,padim")
        for n in names:
            detector_class(n)  # raises with the list of known names
        return names

    def options_for(self, name: str) -> dict[str, object]:
        """``--set`` options of one detector, converted to its config's field types."""
        from dataclasses import fields

        cls = detector_class(name).config_class
        types = {f.name: f.type for f in fields(cls)}
        out: dict[str, object] = {}
        for item in filter(None, (p.strip() for p in self.detector_options.split(","))):
            key, sep, value = item.partition("=")
            det, dot, option = key.strip().partition(".")
            if not sep or not dot:
                raise ValueError(f"--set {item!r}: use DETECTOR.OPTION=VALUE, e.g. patchcore.coreset_ratio=0.1")
            detector_class(det)
            if det != name:
                continue
            if option not in types:
                raise ValueError(f"--set {item!r}: {name} has no option {option!r}; options: {', '.join(types)}")
            kind = str(types[option])
            value = value.strip()
            if "bool" in kind:
                out[option] = value.lower() in ("1", "true", "yes")
            elif "int" in kind:
                out[option] = int(value)
            elif "float" in kind:
                out[option] = float(value)
            else:
                out[option] = value
        return out


@dataclass
class TrainResult:
    config: TrainConfig
    dataset: str
    methods: list[MethodResult]
    detector_maps: dict[str, DetectorMaps]
    seconds: float

    def summary(self) -> dict:
        return {
            "methods": {m.name: m.to_dict() for m in self.methods},
            "config": asdict(self.config),
            "dataset": self.dataset,
            "seconds": round(self.seconds, 1),
            "detectors": {
                name: {
                    "fit_seconds": round(dm.fit_seconds, 2),
                    "predict_ms_per_image": None if np.isnan(dm.predict_ms_per_image) else dm.predict_ms_per_image,
                    "cached_maps": dm.cached_maps,
                }
                for name, dm in self.detector_maps.items()
            },
        }


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(cfg: TrainConfig) -> TrainResult:
    t0 = time.perf_counter()
    names = cfg.detector_names
    options = {n: cfg.options_for(n) for n in names}
    ds: Dataset = load_dataset(cfg.data, cfg.category)
    check_evaluable(ds)
    splits = [seed_split(ds, cfg.shots, s) for s in seeds(cfg.seeds)]  # bad --shots fails here, before any fit
    fs = fit_split(ds)
    _log(ds.summary())
    _log(f"detectors fit on {len(fs.fit_good)} good images; {len(fs.holdout_good)} held out for the classifier")

    size = (cfg.image_size, cfg.image_size)
    fit_set = ImageSet.from_paths([s.image_path for s in fs.fit_good], size)
    scored = list(fs.holdout_good) + list(ds.test)
    score_set = ImageSet.from_paths([s.image_path for s in scored], size)
    cache = None if cfg.no_cache else default_cache()
    maps: dict[str, DetectorMaps] = {}
    for name in names:
        det = make_detector(name, **{"backbone": cfg.backbone, "device": cfg.device, **options[name]})
        _log(f"{name}: fitting / predicting {len(score_set)} images ...")
        maps[name] = compute_maps(det, fit_set, score_set, size, cache)
        dm = maps[name]
        _log(f"{name}: fit {dm.fit_seconds:.1f}s, {dm.cached_maps} maps from cache")

    n_hold = len(fs.holdout_good)
    labels = np.array([s.label for s in ds.test])
    results = {n: MethodResult(n) for n in [*names, "ensemble"]}
    normalised = {n: normalise_scores(maps[n].scores[n_hold:], maps[n].scores[:n_hold]) for n in names}
    ensemble = np.mean([normalised[n] for n in names], axis=0)
    for sp in splits:
        y = labels[sp.test]
        for n in names:
            results[n].add(sp.seed, y, maps[n].scores[n_hold:][sp.test])
        results["ensemble"].add(sp.seed, y, ensemble[sp.test])
    return TrainResult(cfg, f"{ds.name}/{ds.category}", list(results.values()), maps, time.perf_counter() - t0)


def write_json(path: str | Path, payload: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)
    return path


def parse_args(argv: Sequence[str] | None = None) -> TrainConfig:
    ap = argparse.ArgumentParser(prog="python -m segad.train", description=__doc__)
    d = TrainConfig()
    ap.add_argument("--data", default=d.data, help="dataset root (MVTec or VisA layout) or a built-in: elpv, synthetic")
    ap.add_argument("--category", default=d.category, help="category inside the dataset (ELPV: mono or poly)")
    ap.add_argument("--detectors", default=d.detectors, help="comma-separated base detectors")
    ap.add_argument("--backbone", default=d.backbone)
    ap.add_argument("--image-size", type=int, default=d.image_size)
    ap.add_argument("--shots", type=int, default=d.shots, help="labelled defects per seed for the classifier")
    ap.add_argument("--seeds", type=int, default=d.seeds, help="how many of SegAD's 10 seeds to run")
    ap.add_argument("--device", default=d.device, choices=("auto", "cpu", "cuda"))
    ap.add_argument("--summary-json", default=d.summary_json, help="write the results as JSON here")
    ap.add_argument("--no-cache", action="store_true", help="recompute detectors and maps, write nothing to the cache")
    ap.add_argument(
        "--set",
        dest="detector_options",
        action="append",
        default=[],
        metavar="DETECTOR.OPTION=VALUE",
        help="a detector option, e.g. --set patchcore.coreset_ratio=0.1 (repeatable)",
    )
    a = ap.parse_args(argv)
    values = vars(a)
    values["detector_options"] = ",".join(values["detector_options"])
    return TrainConfig(**values)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        cfg = parse_args(argv)
        result = run(cfg)
    except (DatasetError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"\n{result.dataset}: {cfg.shots} shots, {cfg.seeds} seeds, image size {cfg.image_size}")
    print(format_table(result.methods))
    print(f"({result.seconds:.0f} s)")
    if cfg.summary_json:
        write_json(cfg.summary_json, result.summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
