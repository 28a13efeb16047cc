"""Ablation of SegAD's classifier layer on the maps ``segad.train`` caches: what else could carry a lift.

Same data, detectors, segments and seed splits as ``python -m segad.train``; every row is scored on
the same test set of each seed. Rows:

- each detector, ``ensemble`` (mean of z-scores), ``segad`` (SegAD's boosted forest), as in the table
  of ``segad.train``;
- ``segad_monotone``: the same forest, constrained to rise with each map's q0.995, mean and image
  score (a prior for a few shots: a hotter map is never evidence of a good part);
- ``logreg``: ``--classifier logreg``, an L2 logistic regression on standardised features (C=0.01,
  balanced classes);
- ``segad+ensemble``: the mean rank of SegAD's margin and the ensemble score;
- with ``--folds K``: ``segad_crossfit`` and ``ensemble_crossfit``. The detectors are fit K times,
  each time without one fold of the good training images, so *every* good training image gets
  out-of-fold maps for the classifier (SegAD's protocol gives it 10% of them); the test images are
  scored by detectors fit on all good training images. Each fold's fit is cached like any other.

    python experiments/ablate_classifier.py --category mono
    python experiments/ablate_classifier.py --category mono --set patchcore.coreset_ratio=0.1 --folds 5
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np
from scipy.stats import rankdata

from detectors.registry import detector_class
from features import make_segmenter
from features.statistics import STATISTICS
from features.vector import feature_matrix
from segad.classifier import SegadClassifier
from segad.config import TrainConfig
from segad.data.images import INTENSITIES
from segad.evaluate import MethodResult, format_table, normalise_scores
from segad.feature_rows import features
from segad.maps import ImageSet, compute_maps, default_cache
from segad.prepare import prepare
from segad.segmenting import fit_segmenter, segment, segment_images

RISING = ("q995", "mean")  # statistics a defect can only push up


def monotone_constraints(n_detectors: int, n_segments: int) -> str:
    per_segment = [1 if s in RISING else 0 for s in STATISTICS]
    signs = per_segment * (n_detectors * n_segments) + [1] * n_detectors
    return "(" + ",".join(map(str, signs)) + ")"


def crossfit_rows(prep, cfg: TrainConfig, folds: int, segmenter, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Out-of-fold feature rows of every good training image, test rows from an all-good fit, and
    the test images' ensemble score normalised on the out-of-fold good scores."""
    good = list(prep.ds.train_good)
    order = np.random.default_rng(0).permutation(len(good))
    parts = np.array_split(order, folds)
    size, cache = prep.size, default_cache()
    configs = cfg.detector_configs()
    oof_maps = {n: np.zeros((len(good), *size), np.float16) for n in configs}
    oof_scores = {n: np.zeros(len(good), np.float32) for n in configs}
    for f, held in enumerate(parts):
        rest = np.setdiff1d(np.arange(len(good)), held)
        fit_set = ImageSet.from_paths([good[i].image_path for i in rest], size, cfg.intensity)
        held_set = ImageSet.from_paths([good[i].image_path for i in held], size, cfg.intensity)
        for n, c in configs.items():
            dm = compute_maps(detector_class(n)(c), fit_set, held_set, size, cache)
            oof_maps[n][held], oof_scores[n][held] = dm.maps, dm.scores
            print(f"fold {f + 1}/{folds} {n}: fit {dm.fit_seconds:.0f} s", flush=True)
    all_good = ImageSet.from_paths([s.image_path for s in good], size, cfg.intensity)
    test_set = ImageSet.from_paths([s.image_path for s in prep.ds.test], size, cfg.intensity)
    full = {n: compute_maps(detector_class(n)(c), all_good, test_set, size, cache) for n, c in configs.items()}
    X_good = feature_matrix(oof_maps, oof_scores, segment_images(segmenter, all_good, None), k)
    test_seg = segment_images(segmenter, test_set, None)
    X_test = feature_matrix({n: d.maps for n, d in full.items()}, {n: d.scores for n, d in full.items()}, test_seg, k)
    ens = np.mean([normalise_scores(full[n].scores, oof_scores[n]) for n in configs], axis=0)
    return X_good, X_test, ens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="elpv")
    ap.add_argument("--category", default="mono")
    ap.add_argument("--detectors", default="patchcore,padim")
    ap.add_argument("--segments", default="kmeans:8")
    ap.add_argument("--intensity", default="none", choices=INTENSITIES)
    ap.add_argument("--shots", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--folds", type=int, default=0, help="also cross-fit the detectors over K folds (0: off)")
    ap.add_argument("--set", dest="options", action="append", default=[], metavar="DET.OPT=VAL")
    ap.add_argument("--json", help="write the table here")
    args = ap.parse_args()
    if args.folds == 1 or args.folds < 0:
        ap.error("--folds must be 0 (off) or at least 2")
    warnings.filterwarnings("ignore", category=UserWarning)

    cfg = TrainConfig(
        data=args.data,
        category=args.category,
        detectors=args.detectors,
        segments=args.segments,
        intensity=args.intensity,
        shots=args.shots,
        seeds=args.seeds,
        detector_options=",".join(args.options),
        no_mlflow=True,
        judge_folds=0,  # the classifier alone: no final score is chosen
    )
    prep = prepare(cfg, stacking="ablate_classifier.py")
    names = list(prep.maps)
    segmenter = fit_segmenter(make_segmenter(prep.spec, cfg.backbone, cfg.device), prep)
    k = segmenter.n_segments_
    X, X_gen = features(prep, names, *segment(prep, segmenter), k, True)
    nh, labels = prep.n_hold, prep.labels
    X_test = X[nh:]
    ens = np.mean([normalise_scores(prep.maps[n].scores[nh:], prep.maps[n].scores[:nh]) for n in names], axis=0)
    constraints = monotone_constraints(len(names), k)
    extra = crossfit_rows(prep, cfg, args.folds, segmenter, k) if args.folds else None

    rows = [*names, "ensemble", "segad", "segad_monotone", "logreg", "segad+ensemble"]
    if extra:
        rows += ["ensemble_crossfit", "segad_crossfit"]
    results = {r: MethodResult(r) for r in rows}
    for sp in prep.splits:
        y = labels[sp.test]
        X_train, y_train, _ = prep.training_rows(X, X_gen, sp)  # the rows segad.train's classifier trains on
        segad = SegadClassifier("brf", seed=sp.seed).fit(X_train, y_train).decision_function(X_test[sp.test])
        scores = {n: prep.maps[n].scores[nh:][sp.test] for n in names}
        scores["ensemble"] = ens[sp.test]
        scores["segad"] = segad
        mono = SegadClassifier("brf", seed=sp.seed, monotone_constraints=constraints).fit(X_train, y_train)
        scores["segad_monotone"] = mono.decision_function(X_test[sp.test])
        lr = SegadClassifier("logreg", seed=sp.seed).fit(X_train, y_train)
        scores["logreg"] = lr.decision_function(X_test[sp.test])
        scores["segad+ensemble"] = (rankdata(segad) + rankdata(ens[sp.test])) / 2
        if extra:
            X_good, X_cf, ens_cf = extra
            X_cf_train = np.concatenate([X_good, X_cf[sp.train_defects]])
            y_cf = np.r_[np.zeros(len(X_good)), np.ones(len(sp.train_defects))]
            cf = SegadClassifier("brf", seed=sp.seed).fit(X_cf_train, y_cf)
            scores["segad_crossfit"] = cf.decision_function(X_cf[sp.test])
            scores["ensemble_crossfit"] = ens_cf[sp.test]
        for r in rows:
            results[r].add(sp.seed, y, scores[r])

    print(
        f"\n{prep.ds.name}/{prep.ds.category}: {args.detectors}, {segmenter.n_segments_} segments, "
        f"{args.shots} shots, {args.seeds} seeds, held-out good {nh}" + (f", {args.folds} folds" if extra else "")
    )
    print(format_table(list(results.values())))
    if args.json:
        payload = {"config": vars(args), "methods": {r: m.to_dict() for r, m in results.items()}}
        Path(args.json).write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
