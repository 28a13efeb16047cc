"""``python -m segad.train``: SegAD against its base detectors, over SegAD's seeds, on one dataset.

The pipeline, top to bottom: images -> detectors (fit on good, maps cached) -> segments -> per-segment
features -> classifier per seed -> scores -> metrics. Every base detector alone, a naive ensemble
(mean of z-normalised detector scores) and SegAD are scored on the same test set of each seed; the
table gives image AUROC and FPR@95TPR as mean ± std over seeds. The saved model's classifier is the
first seed's (held-out good + that seed's shots + generated defects).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from detectors.atomic import atomic_write
from detectors.errors import InputError
from features import make_segmenter
from features.vector import feature_names
from segad.baselines import (
    BaselineRun,
    check_good_images,
    fit_seed,
    generated_images,
    good_training_images,
)
from segad.classifier import SegadClassifier
from segad.config import TrainConfig, build_parser, config_from
from segad.console import log
from segad.crossfit import SupervisedInput, cross_fit
from segad.evaluate import MethodResult, format_table, good_moments
from segad.explain import explain
from segad.feature_rows import features, judge_features, stacked_features
from segad.overlay import map_scales
from segad.pipeline import SegadPipeline
from segad.prepare import prepare
from segad.results import Deployment, TrainResult
from segad.seed import JudgeRows, fit_seed_model
from segad.segmenting import fit_segmenter, segment
from segad.selection import CLASSIFIER, Selection, choice_summary, ensemble_score


def run(cfg: TrainConfig) -> TrainResult:
    t0 = time.perf_counter()
    # 1. images -> detectors -> anomaly maps (cached)
    prep = prepare(cfg)
    stacked = cfg.stacked_names  # supervised inputs: fit per seed, so their maps and features are too
    names = [*prep.maps, *stacked]

    # 2. segments -> 3. per-segment features (the cached detectors' once; a stacked input's per seed)
    segmenter = fit_segmenter(make_segmenter(prep.spec, cfg.backbone, cfg.device), prep)
    k = segmenter.n_segments_
    with_scores = cfg.feature_set == "full"
    seg, gen_seg = segment(prep, segmenter)
    shared = features(prep, list(prep.maps), seg, gen_seg, k, with_scores)
    n_features = len(feature_names(names, k, with_scores))
    # The final score's extra evidence: every good training image, mapped by a fold model without it.
    judge_X = judge_features(prep, segmenter, seg, gen_seg, k, with_scores) if prep.judge is not None else None
    log(f"segments: {prep.spec} ({k}); {n_features} features per image; {len(shared[1])} generated defects")

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
    first_clf, first_scores, importances, blend, first_inputs, first_why = None, {}, [], None, {}, []
    selections: list[Selection] = []
    deployments: list[Deployment] = []
    for sp in prep.splits:
        y = labels[sp.test]
        fits = fit_seed(sup_configs, prep, sp, normal, generated, log, unscored=stacked)
        seed_maps = {n: cross_fit(fits[n][1], prep, sp, normal, generated, cfg.stack_folds, log) for n in stacked}
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

        # 5. the classifier, and the final score chosen on its out-of-fold margins (segad.seed)
        n_real = n_hold + len(sp.train_defects)
        judge = JudgeRows.for_seed(prep, judge_X, sp, len(X_gen)) if judge_X is not None else None
        seed_model = fit_seed_model(
            make_classifier, X_train, y_train, groups, train_scores, moments, n_real, sp.seed, from_ensemble,
            cfg.target_fpr, judge,
        )  # fmt: skip
        clf, sel, prior, calibration = (
            seed_model.classifier,
            seed_model.selection,
            seed_model.prior,
            seed_model.calibration,
        )
        selections.append(sel)
        margins = seed_model.margins(X_test[sp.test], ensemble)
        scores["segad"] = sel.blend.score(margins, scores)
        scores[CLASSIFIER] = margins
        for name, (fit, model) in fits.items():
            baselines[name].add(fit, model)
            scores[baselines[name].row] = fit.scores
        for method, s in scores.items():
            results[method].add(sp.seed, y, s)
        if np.ptp(clf.decision_function(X_train, prior)) == 0:
            log(
                f"warning: seed {sp.seed}: the classifier learned nothing (constant output) from "
                f"{n_hold} good and {len(y_train) - n_hold} defect examples; add --generated or good images"
            )
        importances.append(clf.feature_importances())
        # Every seed's model gets the threshold the saved one gets: conformal on out-of-fold final scores
        # of its good rows; what it does on that seed's test set is the deployed FPR/TPR.
        deployments.append(Deployment.measure(calibration, y, scores["segad"]))
        if first_clf is None:  # the saved model
            first_clf, first_scores, blend = clf, scores, sel.blend
            # Why each of its test images got its score (segad.explain): the report's misses and false alarms.
            test_prior = ensemble if prior is not None else None
            first_why = explain(blend, clf, feature_names(names, k, with_scores), X_test[sp.test], scores, test_prior)
            first_inputs = {n: SupervisedInput(fits[n][1]) for n in stacked}
            if _learned_nothing(blend, clf.decision_function(X_train, prior), train_scores):
                # A constant score flags every image or none: saving or registering it would ship a model
                # that cannot tell a defect from a good image, with a threshold that looks valid.
                raise InputError(
                    f"the model learned nothing: its final score ({blend.label}) is the same for all "
                    f"{n_hold} good and {len(y_train) - n_hold} defect training images of seed {sp.seed}, so "
                    "nothing is saved; check that the images differ, add --shots or --generated defects"
                )
            if not calibration.meets_target:
                log(
                    f"warning: {calibration.n_good} held-out good images can promise FPR <= "
                    f"{calibration.guaranteed_fpr:.3f}, not --target-fpr {cfg.target_fpr}; the threshold is the "
                    f"strictest they support (raise --holdout for a tighter one)"
                )
    log("final score per seed (chosen on training rows): " + choice_summary(selections))

    # One colour scale per detector for every overlay, from its held-out good images (segad.overlay).
    scales = map_scales({n: m.maps[:n_hold] for n, m in prep.maps.items()}, cfg.target_fpr)
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
            "map_scales": {n: scale.as_dict() for n, scale in scales.items()},
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
        prep.judge.folds if prep.judge is not None else 0,
        first_why,
        seg[prep.n_hold :],
    )


def _constant(values: np.ndarray) -> bool:
    """Constant up to float32 rounding: identical images scored in other batches differ by a few ulps,
    which z-scoring against a spread of a few ulps would blow up into a score that looks informative."""
    v = np.asarray(values, np.float64)
    return bool(np.ptp(v) <= 1e-5 * max(1.0, float(np.abs(v).max())))


def _learned_nothing(blend, margins: np.ndarray, detector_scores: dict[str, np.ndarray]) -> bool:
    """Every part of the final score (the classifier's margins, each base detector's scores) is constant."""
    parts = [margins] if blend.weight > 0 else []
    parts += [detector_scores[d] for d in blend.base_detectors] if blend.weight < 1 else []
    return all(_constant(p) for p in parts)


def write_json(path: str | Path, payload: dict) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(payload, indent=2)))


def parse_args(argv: Sequence[str] | None = None) -> TrainConfig:
    return config_from(vars(build_parser(description=__doc__).parse_args(argv)))


def main(argv: Sequence[str] | None = None) -> int:
    from contextlib import nullcontext

    from segad import tracking

    cfg = parse_args(argv)
    try:
        with nullcontext() if cfg.no_mlflow else tracking.parent_run(cfg) as mlflow_run:
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
    if mlflow_run is not None:
        print(f"in MLflow: {tracking.ui_link(mlflow_run)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
