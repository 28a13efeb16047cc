"""Does the saved model's threshold keep ``--target-fpr`` on unseen good images?

For every seed, the classifier is trained as ``segad.train`` trains it and its threshold is set by
(a) the old rule, a quantile of its own in-sample margins on the held-out good images, and (b) the
shipped rule, ``segad.calibration.calibrate`` (split-conformal on out-of-fold margins). Each threshold
is then applied to that seed's test set, which the classifier never saw: the share of test good
images flagged (the deployed FPR) and of test defects flagged (TPR). The binomial 95% interval is the
range of FPRs a threshold with exactly the target rate would show on that many good images.

    python experiments/bench_threshold.py --data elpv --category mono
    python experiments/bench_threshold.py --data textures --category gravel --image-size 128
"""

from __future__ import annotations

import sys
from dataclasses import replace

import numpy as np
from scipy.stats import binom

from features import make_segmenter
from segad.calibration import calibrate
from segad.classifier import SegadClassifier
from segad.train import _fit_segmenter, build_parser, config_from, features, prepare, segment


def main(argv: list[str] | None = None) -> None:
    cfg = config_from(vars(build_parser("bench_threshold.py").parse_args(argv)))
    cfg = replace(cfg, no_mlflow=True)
    prep = prepare(cfg)
    names = list(prep.maps)
    segmenter = _fit_segmenter(make_segmenter(prep.spec, cfg.backbone, cfg.device), prep)
    X, X_gen = features(prep, names, *segment(prep, segmenter), segmenter.n_segments_, cfg.feature_set == "full")
    labels = prep.labels
    rows: dict[str, list[tuple[float, float]]] = {"in-sample quantile (old)": [], "conformal, out-of-fold": []}
    n_good_test = []
    for sp in prep.splits:
        X_train, y_train, groups = prep.training_rows(X, X_gen, sp)

        def make(seed: int = sp.seed) -> SegadClassifier:
            return SegadClassifier(cfg.classifier, seed=seed, **cfg.classifier_overrides())

        clf = make().fit(X_train, y_train)
        test = clf.decision_function(X[prep.n_hold :][sp.test])
        y = labels[sp.test]
        thresholds = {
            "in-sample quantile (old)": float(
                np.quantile(clf.decision_function(X_train[: prep.n_hold]), 1 - cfg.target_fpr)
            ),
            "conformal, out-of-fold": calibrate(make, X_train, y_train, groups, cfg.target_fpr, seed=sp.seed).threshold,
        }
        for rule, thr in thresholds.items():
            rows[rule].append((float((test[y == 0] >= thr).mean()), float((test[y == 1] >= thr).mean())))
        n_good_test.append(int((y == 0).sum()))
        print(f"seed {sp.seed}: " + ", ".join(f"{r}: FPR {v[-1][0]:.3f}" for r, v in rows.items()), file=sys.stderr)
    n = n_good_test[0]
    lo, hi = binom.ppf(0.025, n, cfg.target_fpr) / n, binom.ppf(0.975, n, cfg.target_fpr) / n
    print(
        f"\n{prep.ds.name}/{prep.ds.category}: {cfg.shots} shots, {len(prep.splits)} seeds, {prep.n_hold} held-out "
        f"good, {n} test good; target FPR {cfg.target_fpr} (binomial 95% interval {lo:.3f}-{hi:.3f})"
    )
    print(f"{'threshold rule':<26} {'FPR seed 1':>10} {'FPR mean ± std':>16} {'TPR mean ± std':>16}")
    for rule, v in rows.items():
        a = np.array(v)
        print(
            f"{rule:<26} {a[0, 0]:>10.3f} {a[:, 0].mean():>8.3f} ± {a[:, 0].std():.3f} "
            f"{a[:, 1].mean():>8.3f} ± {a[:, 1].std():.3f}"
        )


if __name__ == "__main__":
    main()
