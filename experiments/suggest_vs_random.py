"""Does labelling what ``segad.predict --suggest`` picks teach the classifier more than labelling at random?

For each of SegAD's seeds: the classifier is trained as ``segad.train`` trains it (held-out good images
and the seed's ``--shots`` defects); the seed's test images are split at random into an unlabelled pool
and an evaluation half. From the pool, ``--label`` images are picked by ``segad.suggest`` (near the
threshold, detectors disagreeing, spread over drivers) or at random (``--draws`` draws, averaged); their
true labels are added to the training rows, the classifier is refit, and its image AUROC is measured on
the evaluation half, which no pick ever comes from.

    python experiments/suggest_vs_random.py --shots 5 --label 10            # ELPV mono, 10 seeds
    python experiments/suggest_vs_random.py --data synthetic --image-size 128 --shots 5 --label 10

Any ``segad.train`` option works; prints mean ± std over seeds and the paired gain.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np

from features import make_segmenter
from features.vector import feature_names
from segad.classifier import SegadClassifier
from segad.config import build_parser, config_from
from segad.evaluate import good_moments
from segad.explain import explain
from segad.feature_rows import features
from segad.metrics import image_auroc
from segad.prepare import prepare
from segad.segmenting import fit_segmenter, segment
from segad.selection import ENSEMBLE, ScoreBlend, z_score
from segad.suggest import suggest


@dataclass(frozen=True)
class Rows:
    """One seed's training rows, the test rows with their labels, and the evaluation half."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    labels: np.ndarray
    held: np.ndarray

    def fit_and_score(self, cfg, seed: int, extra: np.ndarray) -> tuple[SegadClassifier, float]:
        """Refit with the test rows ``extra`` labelled; the AUROC on the evaluation half."""
        X = np.concatenate([self.X_train, self.X_test[extra]])
        y = np.r_[self.y_train, self.labels[extra]]
        clf = SegadClassifier(cfg.classifier, seed=seed, **cfg.classifier_overrides()).fit(X, y)
        return clf, image_auroc(self.labels[self.held], clf.decision_function(self.X_test[self.held]))


def main() -> None:
    ap = build_parser(prog="python experiments/suggest_vs_random.py", description=__doc__)
    ap.formatter_class = argparse.RawDescriptionHelpFormatter
    ap.add_argument("--label", type=int, default=10, help="images labelled per strategy")
    ap.add_argument("--draws", type=int, default=5, help="random draws per seed, averaged")
    values = vars(ap.parse_args())
    n_label, draws = values.pop("label"), values.pop("draws")
    cfg = config_from({**values, "no_mlflow": True})

    prep = prepare(cfg)
    names = list(prep.maps)
    segmenter = fit_segmenter(make_segmenter(prep.spec, cfg.backbone, cfg.device), prep)
    seg, gen_seg = segment(prep, segmenter)
    X, X_gen = features(prep, names, seg, gen_seg, segmenter.n_segments_, True)
    fnames = feature_names(names, segmenter.n_segments_, True)
    n_hold, labels = prep.n_hold, prep.labels
    X_test = X[n_hold:]
    moments = {n: good_moments(prep.maps[n].scores[:n_hold]) for n in names}
    rows = []
    for sp in prep.splits:
        rng = np.random.default_rng(sp.seed)
        test = rng.permutation(sp.test)
        pool, held = test[: len(test) // 2], test[len(test) // 2 :]
        X_train, y_train, _ = prep.training_rows(X, X_gen, sp)
        start = Rows(X_train, y_train, X_test, labels, held)
        clf0, auroc0 = start.fit_and_score(cfg, sp.seed, np.array([], int))
        good_margins = clf0.decision_function(X[:n_hold])
        blend = ScoreBlend(1.0, ENSEMBLE, moments, (float(good_margins.mean()), float(good_margins.std())))
        scores = {n: prep.maps[n].scores[n_hold:][pool].astype(np.float64) for n in names}
        margins = clf0.decision_function(X_test[pool])
        final = blend.score(margins, scores)
        threshold = float(np.quantile(blend.score(good_margins, {}), 1 - cfg.target_fpr))
        why = explain(blend, clf0, fnames, X_test[pool], scores)
        drivers = [top[0].part if (top := w.top(1)) else "" for w in why]
        z = {n: z_score(scores[n], *moments[n]) for n in names}
        picks = [s.index for s in suggest(final, threshold, z, drivers, n_label)]
        _, auroc_suggest = start.fit_and_score(cfg, sp.seed, pool[picks])
        random = [start.fit_and_score(cfg, sp.seed, rng.choice(pool, n_label, replace=False))[1] for _ in range(draws)]
        rows.append((sp.seed, auroc0, float(np.mean(random)), auroc_suggest, int(labels[pool[picks]].sum())))
        print(
            f"seed {sp.seed}: start {auroc0:.4f}, +{n_label} random {np.mean(random):.4f}, "
            f"+{n_label} suggested {auroc_suggest:.4f} ({rows[-1][4]} of them defects)",
            flush=True,
        )
    a = np.array([r[1:] for r in rows])
    print(f"\n{prep.ds.name}/{prep.ds.category}, {cfg.shots} shots, {len(rows)} seeds, +{n_label} labels:")
    for j, name in enumerate(["start", "random", "suggested"]):
        print(f"{name:>10}: AUROC {a[:, j].mean():.4f} ± {a[:, j].std():.4f}")
    gain = a[:, 2] - a[:, 1]
    print(
        f"suggested - random: {gain.mean():+.4f} ± {gain.std():.4f}; better on {(gain > 0).sum()} of {len(gain)} seeds"
    )
    print(f"defects among the suggested: {a[:, 3].mean():.1f} of {n_label} on average")


if __name__ == "__main__":
    main()
