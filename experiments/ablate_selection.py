"""Ablation of how ``segad.train`` chooses its final score (``segad.selection``), on the maps it caches.

Same data, detectors, segments, seed splits and classifier as ``python -m segad.train`` with the same
options; every row is scored on each seed's test set, and every rule decides on the training rows
only (held-out good images and shots; the classifier's part out of fold). Rows:

- each detector, ``ensemble``, ``classifier`` (the classifier's margin alone): the inputs;
- ``weighted ensemble``: the weighted ensemble of ``segad.selection`` alone (no classifier);
- ``argmax``: the candidate with the best inner AUROC, over every candidate of ``segad.selection``;
- ``1se``: the simplest candidate within one standard error of the best;
- ``default-base argmax`` / ``default-base 1se``: the same two rules over the weighted ensemble's
  blends with the classifier only (no other base);
- ``segad (shipped)``: ``segad.selection.select``, what ``segad.train`` reports as ``segad``: the best
  weight within each base, another base than the weighted ensemble only when it leads by a standard error;
- ``equal base``: the shipped rule with the naive ensemble as the default base (the rule before the
  weighted ensemble);
- ``paired lead``: the shipped rule, a lead judged by DeLong's paired error of the difference;
- ``argmax weight`` / ``paired 1se weight``: the shipped rule with the blend weight chosen, within each
  base, as the best inner AUROC (ties to the smaller weight), or as the smallest classifier weight whose
  inner AUROC is within one paired (DeLong) standard error of the base's best weight (Breiman's one-SE
  rule); the shipped rule is the one-SE rule when judged on every good image (``segad.judging``), the
  argmax on the held-out images only (``--judge-folds 0``);
- ``separation weight``: the shipped rule, but within each base the classifier weight whose judged
  defects' 0.3 quantile sits furthest above the good rows, in their standard deviations (the distance
  the detector weights are read from, instead of the inner AUROC, which ties near 1);
- ``linear weights``: the shipped rule with the detector weights read as before (each detector's 0.3
  quantile itself, not squared, not shrunk towards equal weights: ``detector_weights(rule="linear")``);
- ``no min effect``: the shipped rule without the half-point floor on the blend weight's one-SE margin
  (``select(min_effect=0)``); ``before (linear, no min effect)``: both, and the weights read from the
  judged rows, the rule of two versions before;
- ``judged weights``: the shipped rule with the detector weights read from the judged rows (the fold
  models' shots against the fit images) instead of the deployed models' shots
  (``select(weights_from="judged")``);
- ``held-out spread``: the shipped rule with the deployed models' shots read against the held-out
  images' own spread, not the spread the fold models' view of every good image corrects
  (``select(weights_from="held-out")``, the rule of the version before);
- ``classifier from ensemble``: the same forest boosted from the ensemble (``--classifier-start
  ensemble``: XGBoost's ``base_margin`` = a logistic fit of the ensemble z-score on the training rows),
  alone, so its trees learn a correction to the ensemble rather than everything;
- ``oracle``: the candidate that is best on the test set (not a method: the ceiling of any rule).

    python experiments/ablate_selection.py --data synthetic --category complex
    python experiments/ablate_selection.py --category mono --classifier logreg
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from features import make_segmenter
from segad.classifier import SegadClassifier
from segad.config import build_parser, config_from
from segad.evaluate import MethodResult, format_table, good_moments, paired_difference
from segad.feature_rows import features, judge_features
from segad.metrics import image_auroc
from segad.prepare import prepare
from segad.seed import JudgeRows, fit_seed_model
from segad.segmenting import fit_segmenter, segment
from segad.selection import (
    ENSEMBLE,
    MIN_EFFECT,
    auroc_standard_error,
    candidates,
    ensemble_score,
    select,
)


def choose(cands, inner: dict[str, float], n_defects: int, n_good: int, one_se: bool):
    best = max(inner[c.label] for c in cands)
    if not one_se:
        return next(c for c in cands if inner[c.label] >= best - 1e-12)
    bar = best - auroc_standard_error(best, n_defects, n_good)
    return next(c for c in cands if inner[c.label] >= bar - 1e-12)


def main(argv: list[str] | None = None) -> None:
    parser = build_parser("ablate_selection.py")
    parser.add_argument(
        "--resample-test", type=int, default=200, help="resamples of the test images for the differences' intervals"
    )
    args = parser.parse_args(argv)
    cfg = replace(config_from(vars(args)), no_mlflow=True)
    prep = prepare(cfg, stacking="ablate_selection.py")
    names = list(prep.maps)
    segmenter = fit_segmenter(make_segmenter(prep.spec, cfg.backbone, cfg.device), prep)
    seg, gen_seg = segment(prep, segmenter)
    k, with_scores = segmenter.n_segments_, cfg.feature_set == "full"
    X, X_gen = features(prep, names, seg, gen_seg, k, with_scores)
    judge_X = judge_features(prep, segmenter, seg, gen_seg, k, with_scores) if prep.judge else None
    n_hold, labels = prep.n_hold, prep.labels
    moments = {n: good_moments(prep.maps[n].scores[:n_hold]) for n in names}
    rules = [
        "weighted ensemble",
        "argmax",
        "1se",
        "default-base argmax",
        "default-base 1se",
        "segad (shipped)",
        "equal base",
        "paired lead",
        "argmax weight",
        "paired 1se weight",
        "separation weight",
        "linear weights",
        "no min effect",
        "before (linear, no min effect)",
        "judged weights",
        "held-out spread",
        "oracle",
    ]
    from_ens = MethodResult("classifier from ensemble")
    kept: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {n: [] for n in [*names, ENSEMBLE, "segad (shipped)"]}
    results = {r: MethodResult(r) for r in [*names, ENSEMBLE, "classifier", *rules]}
    for sp in prep.splits:
        X_train, y_train, groups = prep.training_rows(X, X_gen, sp)
        train_scores = prep.training_scores(sp, len(X_gen))
        test_scores = {n: prep.maps[n].scores[n_hold:][sp.test] for n in names}
        X_test, y = X[n_hold:][sp.test], labels[sp.test]

        def make(seed: int = sp.seed) -> SegadClassifier:
            return SegadClassifier(cfg.classifier, seed=seed, **cfg.classifier_overrides())

        n_real = n_hold + len(sp.train_defects)  # generated defects train, never judge
        judge = JudgeRows.for_seed(prep, judge_X, sp, len(X_gen)) if judge_X is not None else None
        model = fit_seed_model(
            make, X_train, y_train, groups, train_scores, moments, n_real, sp.seed, False, 0.01, judge
        )
        margins, oof, shipped = model.margins(X_test, None), model.oof, model.selection
        real = np.arange(len(y_train)) < n_real
        # Every rule decides on the shipped rule's evidence: the same candidates, rows and inner AUROCs.
        judged = {"evidence": model.evidence}
        inner, n_defects, n_good = shipped.inner_auroc, shipped.n_defects, shipped.n_good
        cands = candidates(names, moments, shipped.blend.margin_moments, shipped.weights)
        base_cands = [c for c in cands if c.base == cands[0].base]  # the default base's blends
        test_auroc = {c.label: image_auroc(y, c.score(margins, test_scores)) for c in cands}

        rows = (oof, train_scores, y_train, real, moments)

        def variant(rows=rows, judged=judged, **kw):
            return select(*rows, **kw, **judged).blend

        picks = {
            "weighted ensemble": cands[0],
            "argmax": choose(cands, inner, n_defects, n_good, False),
            "1se": choose(cands, inner, n_defects, n_good, True),
            "default-base argmax": choose(base_cands, inner, n_defects, n_good, False),
            "default-base 1se": choose(base_cands, inner, n_defects, n_good, True),
            "segad (shipped)": shipped.blend,
            "equal base": variant(base="equal"),
            "paired lead": variant(lead="paired"),
            "argmax weight": variant(weight_rule="argmax"),
            "paired 1se weight": variant(weight_rule="paired-1se"),
            "separation weight": variant(weight_rule="separation"),
            "linear weights": variant(detector_weighting="linear"),
            "no min effect": variant(min_effect=0.0),
            "before (linear, no min effect)": variant(
                detector_weighting="linear", min_effect=0.0, weights_from="judged"
            ),
            "judged weights": variant(weights_from="judged"),
            "held-out spread": variant(weights_from="held-out"),
            "oracle": max(cands, key=lambda c: test_auroc[c.label]),
        }
        inputs = {**test_scores, ENSEMBLE: ensemble_score(test_scores, moments)}
        for n, s in inputs.items():
            results[n].add(sp.seed, y, s)
            kept[n].append((y, s))
        results["classifier"].add(sp.seed, y, margins)
        if cfg.classifier != "logreg":
            z_train, z_test = ensemble_score(train_scores, moments), ensemble_score(test_scores, moments)
            from_ens.add(sp.seed, y, make().fit(X_train, y_train, z_train).decision_function(X_test, z_test))
        picked = {pick: c.score(margins, test_scores) for pick, c in picks.items()}
        for pick, s in picked.items():
            results[pick].add(sp.seed, y, s)
        kept["segad (shipped)"].append((y, picked["segad (shipped)"]))
        print(f"seed {sp.seed}: " + ", ".join(f"{r}: {c.label}" for r, c in picks.items()), flush=True)
    print(
        f"\n{prep.ds.name}/{prep.ds.category}, {cfg.shots} shots, {len(prep.splits)} seeds, classifier {cfg.classifier}"
    )
    print(format_table([*results.values(), *([from_ens] if from_ens.per_seed else [])]))
    if args.resample_test > 0:
        _print_differences(kept, results, args.resample_test)


def _print_differences(
    kept: dict[str, list[tuple[np.ndarray, np.ndarray]]], results: dict[str, MethodResult], resamples: int
) -> None:
    """segad against each input, and the verdict on "never materially worse" against the best of them."""
    inputs = [n for n in kept if n != "segad (shipped)"]
    reference = max(inputs, key=lambda n: results[n].auroc_mean)
    print(
        "\nsegad (shipped) minus each input: mean over seeds "
        f"[95 % normal interval, standard error over {resamples} paired resamples of the test images]"
    )
    for n in inputs:
        per_seed = [(y, a, b) for (y, a), (_, b) in zip(kept["segad (shipped)"], kept[n], strict=True)]
        d = paired_difference(per_seed, resamples)
        print(
            f"  {n:<10} AUROC {100 * d.auroc:+.2f} points "
            f"[{100 * d.auroc_interval[0]:+.2f}, {100 * d.auroc_interval[1]:+.2f}]"
            f"   FPR@95TPR {d.fpr95:+.4f} [{d.fpr95_interval[0]:+.4f}, {d.fpr95_interval[1]:+.4f}]"
        )
    seg, ref = results["segad (shipped)"], results[reference]
    auroc_ok = seg.auroc_mean >= ref.auroc_mean - MIN_EFFECT  # half a point, the tolerance
    fpr_ok = seg.fpr95_mean <= ref.fpr95_mean + 1e-9
    print(
        f"never materially worse than the best input ({reference}): AUROC within half a point: "
        f"{'yes' if auroc_ok else 'NO'}; FPR@95TPR no worse: {'yes' if fpr_ok else 'NO'}"
    )


if __name__ == "__main__":
    main()
