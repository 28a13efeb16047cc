"""More good images to choose the final score on: each detector cross-fitted over its own fit images.

The final score is chosen on the classifier's training rows (``segad.selection``): the held-out good
images (10%: 20 on a texture set) and ten shots. There every candidate scores 0.96-1.00, so no rule
can see that PatchCore alone leads the ensemble by a point on grass, or that a forest blend costs a
third of a point on gravel. The good images the detectors were fit on are nine times as many, but a
detector scores its own fit images in-sample. So each detector is fit ``folds`` more times, each time
without one fold of its fit images, and every fit image gets its map from the fold model that never
saw it: the judged good images grow from the held-out ones to all good training images.

Judged rows must be scored alike, so the held-out good images, the shots and the generated defects
get their maps from a fold model too (image ``i`` from fold ``i mod folds``), and the classifier's
judged margins come from a second classifier fit the same way on those maps' features (out of fold
on its own rows; the fit images are never its rows). Every judged score then comes from a model fit on
``(folds - 1) / folds`` of the images and is z-scored against the judged good rows. Mixing the two
would mislead: fold models score good images a little higher (PaDiM's covariances from fewer images),
and the deployed classifier, reading their features, flagged so many fit images that on the complex
board it lost to the ensemble it beats by ten points. The deployed detectors and classifier are still
the ones fit on everything: the folds only decide the blend and its classifier share, and correct the
good-image spread the detector weights are read against (the weights themselves come from the
deployed models' shots: ``selection.WeightsFrom``, ``selection.pooled_spread``).

Cost: ``folds`` extra fits per detector, one more prediction of every image (both cached like any fit)
and a second classifier per seed. ``--judge-folds 0`` judges on the held-out rows only, as before; the
default cross-fits only when no detector trains (see ``segad.prepare.judge_folds``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from segad.maps import predict_maps
from segad.sources import FittedDetector, MapRequest

JUDGE_FOLDS = 5
FOLD_SEED = 0


@dataclass(frozen=True)
class JudgeMaps:
    """Every detector's out-of-fold maps of its fit images, and fold-model maps of the scored images that
    judge (``judged``: the held-out good images and every seed's shots; the other test images never do)."""

    folds: int
    good_maps: dict[str, np.ndarray]  # detector -> (n_fit, H, W) float16, each from the fold model without it
    good_scores: dict[str, np.ndarray]  # detector -> (n_fit,)
    judged: np.ndarray  # sorted indices into the scored images (held-out good, then test) mapped here
    scored_maps: dict[str, np.ndarray]  # detector -> (len(judged), H, W): the maps of those images
    scored_scores: dict[str, np.ndarray]  # detector -> (len(judged),)
    gen_maps: dict[str, np.ndarray]  # detector -> maps of the generated defects
    gen_scores: dict[str, np.ndarray]

    def rows_of(self, scored: np.ndarray) -> np.ndarray:
        """Where scored images (indices into the scored images) sit in ``scored_maps`` / ``scored_scores``."""
        scored = np.asarray(scored, np.int64)
        at = np.searchsorted(self.judged, scored)
        if not np.array_equal(self.judged[np.minimum(at, len(self.judged) - 1)], scored):
            raise ValueError("asked for the fold-model scores of an image that does not judge (not mapped)")
        return at

    def training_scores(self, train_defects: np.ndarray, n_hold: int, n_gen: int) -> dict[str, np.ndarray]:
        """Fold-model scores of one seed's classifier rows, in ``Prepared.training_rows`` order."""
        rows = self.rows_of(np.r_[np.arange(n_hold), n_hold + np.asarray(train_defects, np.int64)])
        return {n: np.concatenate([s[rows], self.gen_scores[n][:n_gen]]) for n, s in self.scored_scores.items()}


def judging_images(n_hold: int, train_defects: Sequence[np.ndarray]) -> np.ndarray:
    """The scored images that judge (indices into held-out good, then test): the held-out good images and
    every seed's shots (``train_defects``); the other test images never do, so they are not mapped."""
    return np.unique(
        np.r_[np.arange(n_hold), n_hold + np.concatenate([np.asarray(t, np.int64) for t in train_defects])]
    )


def fold_of(n: int, folds: int, seed: int = FOLD_SEED) -> np.ndarray:
    """Each of ``n`` fit images' fold: a seeded shuffle dealt round-robin, so folds differ by at most one."""
    return np.random.default_rng(seed).permutation(n) % folds


def cross_fit(
    sources: Mapping[str, FittedDetector],
    request: MapRequest,
    folds: int,
    log: Callable[[str], None],
    judged: np.ndarray | None = None,
) -> JudgeMaps:
    """Fit each detector ``folds`` times, each without one fold of ``request.fit_set``; map every fit
    image with the model that never saw it, every generated defect and the ``judged`` scored images (by
    default all) with fold ``i mod folds``."""
    if folds < 2:
        raise ValueError(f"cross-fitting needs at least 2 folds, got {folds}")
    n_fit = len(request.fit_set)
    if n_fit < folds:
        raise ValueError(f"{n_fit} fit images cannot be dealt into {folds} folds")
    fold = fold_of(n_fit, folds)
    judged = np.arange(len(request.score_set)) if judged is None else np.unique(np.asarray(judged, np.int64))
    out: dict[str, tuple[np.ndarray, ...]] = {}
    for name, source in sources.items():
        good = _empty(n_fit, request.size)
        scored, gen = _empty(len(judged), request.size), _empty(len(request.gen_set), request.size)
        for k in range(folds):
            part = replace(request, fit_set=request.fit_set.subset(np.flatnonzero(fold != k).tolist()))
            det, entry, _ = source.fitted(part, log)
            inside, gen_k = np.flatnonzero(fold == k), np.arange(k, len(request.gen_set), folds)
            mine = np.flatnonzero(judged % folds == k)  # positions in ``judged`` whose image is fold k's
            for images, ids, into, rows in (
                (request.fit_set, inside, good, inside),
                (request.score_set, judged[mine], scored, mine),
                (request.gen_set, gen_k, gen, gen_k),
            ):
                if len(ids):
                    dm = predict_maps(det, images.subset(ids.tolist()), request.size, entry)
                    into[0][rows], into[1][rows] = dm.maps, dm.scores
        out[name] = (*good, *scored, *gen)
        log(f"{name}: cross-fitted over {folds} folds of its {n_fit} fit images (judging the final score)")
    good_maps, good_scores, scored_maps, scored_scores, gen_maps, gen_scores = (
        {n: v[i] for n, v in out.items()} for i in range(6)
    )
    return JudgeMaps(folds, good_maps, good_scores, judged, scored_maps, scored_scores, gen_maps, gen_scores)


def _empty(n: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    return np.empty((n, *size), np.float16), np.empty(n, np.float32)


__all__ = ["JUDGE_FOLDS", "JudgeMaps", "cross_fit", "fold_of", "judging_images"]
