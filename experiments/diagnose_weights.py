"""Where the weighted ensemble's detector weights come from, and what the test set says about them.

Classifier-free: the maps, fold maps and seed splits of ``python -m segad.train`` with the same options.
Prints, mean over SegAD's seeds:

- each detector's weight (``segad.selection.detector_weights``, read as ``segad.train`` reads it: the
  deployed models' shots against the held-out good images' mean and the corrected spread), seed by seed;
- how far the weak defects sit out, as z-scores against good images, read three ways: the judged
  shots (fold models, against every good training image, as ``segad.selection`` judges), the
  deployed shots (against the held-out good images) and the test defects (against the test good
  images); the 0.3 quantile is what the weights read, the 0.05 quantile what FPR@95TPR depends on;
- how much higher the fold models score the held-out good images and the shots than the deployed ones;
- each detector's good-image spread in the deployed units: the held-out images', the one the fold models'
  view of every good image corrects (``segad.selection.weight_reference``, what the weights are read
  against), and the test set's good images' (the target);
- the share of test defects each detector misses (below the test good images' median, where
  FPR@95TPR is decided when it is near 0.5), and how many labelled defects it would take to tell two
  detectors' shares apart (two standard errors of the difference of two proportions);
- for two detectors, the test set's image AUROC and FPR@95TPR of ``a z_1 + (1 - a) z_2`` over ``a``
  (a sweep of the first detector's share; the test set, so a diagnosis, never a rule).

    python experiments/diagnose_weights.py --data elpv --category dra
    python experiments/diagnose_weights.py --data textures --category grass --image-size 128
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from segad.config import build_parser, config_from
from segad.evaluate import good_moments
from segad.metrics import fpr_at_tpr, image_auroc
from segad.prepare import prepare
from segad.selection import detector_weights, weight_reference, z_score

QUANTILES = (0.05, 0.3)


def _distance(defects: np.ndarray, good: np.ndarray, q: float) -> float:
    return float((np.quantile(defects, q) - good.mean()) / good.std())


def main(argv: list[str] | None = None) -> None:
    cfg = replace(config_from(vars(build_parser("diagnose_weights.py").parse_args(argv))), no_mlflow=True)
    prep = prepare(cfg, stacking="diagnose_weights.py")
    if prep.judge is None:
        raise SystemExit("no fold maps (--judge-folds 0 or a detector that trains): pass --judge-folds 5")
    names, n_hold = list(prep.maps), prep.n_hold
    moments = {n: good_moments(prep.maps[n].scores[:n_hold]) for n in names}
    rows: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    weights: dict[str, list[float]] = {n: [] for n in names}
    sweep = np.linspace(0.0, 1.0, 11)
    swept = []
    fit_good = {n: np.asarray(prep.judge.good_scores[n], np.float64) for n in names}
    for sp in prep.splits:
        shots = n_hold + np.asarray(sp.train_defects)
        judged = prep.judge.training_scores(sp.train_defects, n_hold, 0)  # held-out good, then shots
        deployed = {n: np.asarray(prep.maps[n].scores, np.float64) for n in names}
        fold = {n: np.asarray(judged[n], np.float64) for n in names}
        reference = weight_reference(
            moments, {n: v[:n_hold] for n, v in deployed.items()}, {n: v[:n_hold] for n, v in fold.items()}, fit_good
        )
        y = prep.labels[sp.test]
        for n in names:
            test = deployed[n][n_hold:][sp.test]
            row = {}
            for q in QUANTILES:
                row[f"judged {q}"] = _distance(fold[n][n_hold:], np.r_[fold[n][:n_hold], fit_good[n]], q)
                row[f"deployed {q}"] = _distance(deployed[n][shots], deployed[n][:n_hold], q)
                row[f"test {q}"] = _distance(test[y == 1], test[y == 0], q)
            row["missed"] = float(np.mean(test[y == 1] < np.median(test[y == 0])))
            row["held-out spread"] = float(deployed[n][:n_hold].std())
            row["corrected spread"] = reference[n][1]
            row["test spread"] = float(test[y == 0].std())
            row["good shift"] = float(fold[n][:n_hold].mean() - deployed[n][:n_hold].mean())
            row["shot shift"] = float(fold[n][n_hold:].mean() - deployed[n][shots].mean())
            rows[n].append(row)
        w = detector_weights({n: z_score(deployed[n][shots], *reference[n]) for n in names})
        for n in names:
            weights[n].append(w[n])
        if len(names) == 2:
            z = [z_score(deployed[n][n_hold:][sp.test], *moments[n]) for n in names]
            swept.append(
                [(image_auroc(y, a * z[0] + (1 - a) * z[1]), fpr_at_tpr(y, a * z[0] + (1 - a) * z[1])) for a in sweep]
            )
    print(f"\n{prep.ds.name}/{prep.ds.category}, {cfg.shots} shots, {len(prep.splits)} seeds")
    for n in names:
        print(f"{n} weight per seed: " + ", ".join(f"{v:.2f}" for v in weights[n]))
    missed: dict[str, float] = {}
    print("\nweak defects' z, mean over seeds (judged shots / deployed shots / test defects):")
    for n, r in rows.items():
        m = {k: float(np.mean([row[k] for row in r])) for k in r[0]}
        cells = [f"q{q}: {m[f'judged {q}']:.2f} / {m[f'deployed {q}']:.2f} / {m[f'test {q}']:.2f}" for q in QUANTILES]
        print(
            f"  {n}: "
            + "; ".join(cells)
            + f"; fold minus deployed score: held-out good {m['good shift']:+.2f}, shots {m['shot shift']:+.2f}"
        )
        print(
            f"    good-image spread: held-out {m['held-out spread']:.3f}, corrected {m['corrected spread']:.3f}, "
            f"test {m['test spread']:.3f}"
        )
        missed[n] = m["missed"]
        print(f"    test defects below the test good images' median (missed): {100 * m['missed']:.1f} %")
    if len(names) == 2:
        p, q = missed[names[0]], missed[names[1]]
        if abs(p - q) < 0.001:
            print("  the two detectors miss the same share of test defects (to 0.1 %)")
        else:
            need = 4 * (p * (1 - p) + q * (1 - q)) / (p - q) ** 2
            print(
                f"  labelled defects needed to tell these two miss rates apart (difference over 2 standard "
                f"errors, independent shots): {need:.0f}"
            )
    if swept:
        mean = np.mean(swept, axis=0)
        print(f"\ntest set, {names[0]}'s share a of a z_{names[0]} + (1 - a) z_{names[1]} (image AUROC / FPR@95TPR):")
        for a, (auc, fpr) in zip(sweep, mean, strict=True):
            print(f"  a = {a:.1f}: {auc:.4f} / {fpr:.3f}")


if __name__ == "__main__":
    main()
