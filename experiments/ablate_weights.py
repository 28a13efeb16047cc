"""Ablation of the weighted ensemble's weights (``segad.selection.detector_weights``), classifier-free.

Same data, detectors, maps and seed splits as ``python -m segad.train`` with the same options. Each
seed reads every detector's weight from its shots' z-scores (against the held-out good images, their
own mean and spread: no fold models here, so not the spread ``segad.train`` corrects with them when it
judges on every good image, ``selection.pooled_spread``; that is ``ablate_selection.py``'s) and scores
its test set with ``sum_d a_d z_d``. Rows, image AUROC and FPR@95TPR, and the AUROC minus the
best of each detector and the naive ensemble, in points:

- ``quantile q``: the 0.2, 0.3 and 0.5 quantile of the shots' z-scores, clipped at zero (the rule
  before the shrinkage: ``detector_weights(rule="linear")``);
- ``quantile 0.3 squared``: a sharper weighting of the same evidence;
- ``quantile 0.3 squared, shrunk (shipped)``: ``detector_weights``: squared, then shrunk towards equal
  weights by the weights' bootstrap noise over the shots;
- ``lda median``: ``cov(good z)^-1 @ median(shot z)``, clipped, the Gaussian-optimal direction;
- ``quantile 0.3 decorrelated``: ``corr(good z)^-1 @`` the shots' 0.3 quantile, clipped;
- ``max separation``: the non-negative weights on a 0.05 grid whose combination puts the shots' 0.3
  quantile furthest above the good images, in the combination's own good-image standard deviations.

    python experiments/ablate_weights.py --data textures --category grass [--image-size 128]
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from segad.config import build_parser, config_from
from segad.evaluate import MethodResult, format_table, good_moments
from segad.prepare import prepare
from segad.selection import WEIGHT_QUANTILE, detector_weights

Rule = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (shot z, good z) -> weights


def _normalised(w: np.ndarray) -> np.ndarray:
    w = np.maximum(np.asarray(w, np.float64), 0.0)
    return w / w.sum() if w.sum() > 0 else np.full(len(w), 1.0 / len(w))


def _quantile(q: float, power: float = 1.0) -> Rule:
    """``segad.selection.detector_weights`` at quantile ``q``, sharpened by ``power``."""

    def rule(shots: np.ndarray, good: np.ndarray) -> np.ndarray:
        w = detector_weights({i: shots[:, i] for i in range(shots.shape[1])}, q, rule="linear")
        return _normalised(np.array(list(w.values())) ** power)

    return rule


def _shrunk(shots: np.ndarray, good: np.ndarray) -> np.ndarray:
    """The shipped rule: the 0.3 quantile squared, shrunk towards equal weights by its bootstrap noise."""
    return np.array(list(detector_weights({i: shots[:, i] for i in range(shots.shape[1])}).values()))


def _lda(shots: np.ndarray, good: np.ndarray) -> np.ndarray:
    cov = np.cov(good.T) + 1e-3 * np.eye(good.shape[1])
    return _normalised(np.linalg.solve(cov, np.median(shots, axis=0)))


def _decorrelated(shots: np.ndarray, good: np.ndarray) -> np.ndarray:
    """The shipped quantile times the inverse of the detectors' correlation on good images: the Gaussian
    optimum for a shift, which moves weight from a detector that mostly repeats a stronger one."""
    return _normalised(np.linalg.solve(np.corrcoef(good.T), np.quantile(shots, WEIGHT_QUANTILE, axis=0)))


def _max_separation(shots: np.ndarray, good: np.ndarray) -> np.ndarray:
    m = shots.shape[1]
    grid = [np.array(c) / 20 for c in itertools.product(range(21), repeat=m) if sum(c) == 20]
    cov = np.cov(good.T)
    return max(grid, key=lambda w: (np.quantile(shots @ w, 0.3) / np.sqrt(w @ cov @ w), -np.abs(w - 1 / m).sum()))


RULES: dict[str, Rule] = {
    "quantile 0.2": _quantile(0.2),
    "quantile 0.3": _quantile(WEIGHT_QUANTILE),
    "quantile 0.5": _quantile(0.5),
    "quantile 0.3 squared": _quantile(0.3, 2.0),
    "quantile 0.3 squared, shrunk (shipped)": _shrunk,
    "lda median": _lda,
    "quantile 0.3 decorrelated": _decorrelated,
    "max separation": _max_separation,
}


def main(argv: list[str] | None = None) -> None:
    # Classifier-free: the weights are read from the held-out good images, as before judging existed.
    cfg = replace(config_from(vars(build_parser("ablate_weights.py").parse_args(argv))), no_mlflow=True, judge_folds=0)
    prep = prepare(cfg, stacking="ablate_weights.py")
    names, n_hold = list(prep.maps), prep.n_hold
    moments = {n: good_moments(prep.maps[n].scores[:n_hold]) for n in names}
    z = np.stack([(np.asarray(prep.maps[n].scores, np.float64) - moments[n][0]) / moments[n][1] for n in names], 1)
    results = {r: MethodResult(r) for r in [*names, "naive ensemble", *RULES]}
    for sp in prep.splits:
        shots, test, y = z[n_hold:][sp.train_defects], z[n_hold:][sp.test], prep.labels[sp.test]
        for i, n in enumerate(names):
            results[n].add(sp.seed, y, test[:, i])
        results["naive ensemble"].add(sp.seed, y, test.mean(axis=1))
        for rule, weights in RULES.items():
            results[rule].add(sp.seed, y, test @ weights(shots, z[:n_hold]))
    print(f"\n{prep.ds.name}/{prep.ds.category}, {cfg.shots} shots, {len(prep.splits)} seeds")
    print(format_table(list(results.values())))
    best = max(results[n].auroc_mean for n in [*names, "naive ensemble"])
    print(
        "\nminus the best of the detectors and the naive ensemble, points: "
        + ", ".join(f"{r} {100 * (results[r].auroc_mean - best):+.2f}" for r in RULES)
    )


if __name__ == "__main__":
    main()
