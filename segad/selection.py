"""Choosing the final score inside the training data: SegAD's classifier, the ensemble, a detector, or a blend.

With ten labelled defects a forest over hundreds of statistics can end up below the image scores it
was handed (ELPV, textures), while on products whose components vary benignly it is the only thing
that works. Which case a run is in cannot be known in advance, and must not be read off the test set.
So every seed decides on its own training rows: each candidate score is computed for the held-out good
images and the shots (the classifier's part out of fold, from models that never saw the row), and
their AUROC there (the inner AUROC) decides.

Every candidate is one formula, ``w * z(classifier margin) + (1 - w) * sum_d a_d z_d(detector score)``:
z-scores against good images (detectors: the held-out good images; the classifier: its out-of-fold
margins on them), ``w`` in ``BLEND_WEIGHTS``, and a base ``a``: the weighted ensemble (below), the naive
ensemble (equal ``a_d``) or one detector. ``w = 0`` is the base alone, ``w = 1`` the classifier alone.

The rows it is judged on: by default every good training image, not only the held-out ones, each
scored by a detector fit without it, with the shots and a classifier scored the same way
(``segad.judging``, ``Evidence``); with ``--judge-folds 0``, the held-out good images and the shots.

The rule (measured against others by ``experiments/ablate_selection.py``):

- the default base is the **weighted ensemble**: each detector's raw weight is how far the weaker shots
  (their 0.3 quantile) sit above good images, in that detector's good-image standard deviations, clipped
  at zero and squared, read in the units the weights are applied in (the deployed models' scores, even
  when the blend is judged on the fold models, against the held-out good images' mean and a spread the
  fold models' view of every good image corrects: ``pooled_spread``); the weights are then
  shrunk towards equal by their own bootstrap noise over the defects (``detector_weights``). The weak
  defects are the ones that decide AUROC and FPR@95TPR, and their distance is measurable where ranks are
  not: with 20 good rows and 10 shots every detector's inner AUROC is 0.96-1.00, but PatchCore's weak
  texture defects sit 3-4 standard deviations out where PaDiM's sit at 1. Squared, a detector that only
  adds false alarms there (PaDiM on gravel) gets 9 % of the weight at most instead of a fifth; shrunk,
  detectors that ten shots cannot tell apart keep equal weights, so the averaging that made the naive
  ensemble beat both on ELPV stays. Judged out of sample: each judged defect's base score uses the
  weights of the other defects;
- within each base, the blend weight ``w``: one parameter along one line is little to over-fit, and it
  is where the lift is (on the complex product the classifier is worth 10 points, on ELPV mono
  nothing). Judged on every good image, the smallest ``w`` whose inner AUROC is within one paired
  (DeLong) standard error of the base's best (Breiman's one-SE rule): there the inner AUROCs no longer
  tie at 1, so the argmax follows the classifier's noise on the few shots (gravel: -0.7 points against
  PatchCore), while the paired error lets a classifier that clearly helps in (the complex board). The
  margin is at least half a point (``MIN_EFFECT``): near an inner AUROC of 1 the paired error collapses
  to a few pairs, and leads that small did not hold on test images. On the
  held-out images only, the best inner AUROC (ties: the smaller weight), where the one-SE rule measured
  worse (brick -0.7, the complex board +5.4 instead of +8);
- another base (the naive ensemble, a single detector) replaces the default only when its best beats
  the default's best by more than one standard error (Hanley & McNeil, 1982): the argmax over a dozen
  noisy candidates is biased up, and picking single detectors on leads of 1-3 inner points lost 1.7
  test points on two ELPV mono seeds. A detector that is clearly better still wins.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from segad.evaluate import good_moments
from segad.metrics import image_auroc

BLEND_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
# Which defects a detector's weight is read from: the 0.3 quantile of the judged defects' z-scores
# (the third-weakest of ten shots). Measured with experiments/ablate_weights.py: 0.2 lets one weak shot zero a
# detector that the ensemble needed (grass at 128 px -1.2 points), 0.5 follows the gross defects that
# every detector finds (grass at 256 px -0.8 against PatchCore alone).
WEIGHT_QUANTILE = 0.3
# Each detector's raw weight is that quantile squared (clipped at zero), and the weights are then shrunk
# towards equal by their own bootstrap noise over the defects (``detector_weights``). Squared alone lost
# where two detectors are close (128 px grass, ELPV poly: the weights there are noise, and averaging is
# what helps); linear and unshrunk kept PaDiM at a fifth of the weight on gravel, where it only adds
# false alarms (experiments/ablate_selection.py, ``linear weights``).
WEIGHT_POWER = 2.0
WEIGHT_BOOTSTRAPS = 500
# How the detector weights are read: "shrunk" (shipped: squared, shrunk towards equal) or "linear" (the
# quantile itself, unshrunk: the rule before, for the ablation). Not the blend weight (``WeightRule``).
DetectorWeighting = Literal["shrunk", "linear"]
# Which z-scores the weights are read from when judging on every good image:
# - "deployed" (shipped): the deployed models' shots (the units the weights are applied in), against the
#   held-out images' mean and a good-image spread that the fold models' view of every good training
#   image corrects (``pooled_spread``): the held-out images are one fixed draw of 20 on the textures, and
#   on grass they show PaDiM's spread at 0.82 where the test set's good images show 1.64 times that, which
#   hands PaDiM a weight its false alarms do not earn;
# - "held-out": the same shots against the held-out images' own mean and spread (the rule before);
# - "judged": the fold models' shots against the fit images (on the textures PaDiM's fold models, fit on
#   fewer images, score shots 6-9 higher and held-out good images 4.7-7.1 higher than the deployed one,
#   which moves its distance: experiments/diagnose_weights.py).
# Measured in experiments/ablate_selection.py, rows ``held-out spread`` and ``judged weights``.
WeightsFrom = Literal["deployed", "held-out", "judged"]
# The smallest inner-AUROC lead that moves the blend weight off the base, whatever the paired error says:
# half a point, the tolerance of "never materially worse". Near an inner AUROC of 1 the paired (DeLong)
# error collapses, and a lead of a few good-defect pairs (gravel: +0.003, 6 of 2,000) let a classifier
# in that cost a test image or two.
MIN_EFFECT = 0.005
# The default base: the weighted ensemble (shipped) or the naive one (the rule before it, for the ablation).
Base = Literal["weighted", "equal"]
# How a challenger's lead is judged: Hanley-McNeil error of its AUROC (shipped), or DeLong's paired error
# of the difference (measured in experiments/ablate_selection.py: no gain).
Lead = Literal["hanley", "paired"]
# How the blend weight is chosen within a base: the best inner AUROC, ties to the smaller weight (shipped when
# judged on the held-out images only), the smallest weight within one paired standard error of that best
# (Breiman's one-SE rule; shipped when judged on every good image, segad.judging), or the separation rule
# (measured in experiments/ablate_selection.py).
WeightRule = Literal["argmax", "paired-1se", "separation"]
ENSEMBLE = "ensemble"
WEIGHTED = "weighted ensemble"
CLASSIFIER = "classifier"


def z_score(values: np.ndarray, mean: float, std: float) -> np.ndarray:
    """Scores against a (mean, std) of good images' (``evaluate.good_moments``)."""
    return (np.asarray(values, np.float64) - mean) / std


def pooled_spread(deployed_held: np.ndarray, fold_held: np.ndarray, fold_fit: np.ndarray) -> float:
    """The deployed model's standard deviation on good images, from the few held-out ones it can score
    fairly, corrected by what the fold models see on every good image (the regression estimator of
    double sampling, Cochran 1977, ch. 12): ``var = s_H^2 + b^2 (S_A^2 - s_H'^2)``, where ``s_H`` is the
    deployed scores' spread on the held-out images, ``s_H'`` and ``S_A`` the fold scores' spread on them
    and on every good image (the held-out ones and the fit images, ``fold_fit``, each out of fold), and
    ``b`` the slope of deployed on fold scores over the held-out images. Exact when the two models'
    scores are affine in each other, and the held-out spread itself when they are unrelated (``b = 0``):
    the correction is only as strong as the two models agree on which good images look unusual."""
    dep, fh = np.asarray(deployed_held, np.float64), np.asarray(fold_held, np.float64)
    fa = np.r_[fh, np.asarray(fold_fit, np.float64)]
    keep = np.isfinite(dep) & np.isfinite(fh)
    dep, fh, fa = dep[keep], fh[keep], fa[np.isfinite(fa)]
    base = float(np.std(dep)) if dep.size else 0.0
    if dep.size < 3 or not np.var(fh) > 0 or fa.size < 2:
        return base if base > 0 else 1.0
    slope = float(np.cov(dep, fh, bias=True)[0, 1] / np.var(fh))
    var = base**2 + slope**2 * (np.var(fa) - np.var(fh))
    return float(np.sqrt(var)) if var > 0 else (base if base > 0 else 1.0)


def weight_reference(
    detector_moments: Mapping[str, tuple[float, float]],
    deployed_held: Mapping[str, np.ndarray],
    fold_held: Mapping[str, np.ndarray],
    fold_fit: Mapping[str, np.ndarray],
) -> dict[str, tuple[float, float]]:
    """Each detector's (mean, spread) the shots' z-scores are read against for the weights: the held-out
    good images' mean (``detector_moments``) and the spread ``pooled_spread`` corrects."""
    return {d: (m[0], pooled_spread(deployed_held[d], fold_held[d], fold_fit[d])) for d, m in detector_moments.items()}


def ensemble_score(detector_scores: Mapping[str, np.ndarray], moments: Mapping[str, tuple[float, float]]) -> np.ndarray:
    """The naive ensemble: each detector's z-score against good images (``moments``), averaged."""
    return np.mean([z_score(detector_scores[d], *m) for d, m in moments.items()], axis=0)


def weighted_score(
    detector_scores: Mapping[str, np.ndarray],
    moments: Mapping[str, tuple[float, float]],
    weights: Mapping[str, float],
) -> np.ndarray:
    """``sum_d weights[d] * z_d``; detectors with no weight are not read (they need not be computed)."""
    used = [(d, a) for d, a in weights.items() if a > 0]
    return np.sum([a * z_score(detector_scores[d], *moments[d]) for d, a in used], axis=0)


def detector_weights(
    defect_z: Mapping[str, np.ndarray], quantile: float = WEIGHT_QUANTILE, rule: DetectorWeighting = "shrunk"
) -> dict[str, float]:
    """The weighted ensemble's weights from each detector's defects' z-scores (equal weights when no
    detector puts its weaker defects above good images).

    ``"linear"``: each detector's ``quantile``, clipped at zero, normalised to sum 1. ``"shrunk"``: that
    quantile squared, then pulled towards equal weights by the Ledoit-Wolf shrinkage intensity
    ``sum_d var(w_d) / sum_d (w_d - 1/k)^2`` (clipped to 1), with ``var`` over bootstrap resamples of the
    defects (fixed seed). Squaring leans on a detector that clearly sees the weak defects better (a
    fifth of the weight on a detector that only adds false alarms costs gravel a test image or two);
    the shrinkage undoes it where ten shots cannot tell the detectors apart, which is where averaging
    them is what helps (ELPV)."""
    names = list(defect_z)
    power = 1.0 if rule == "linear" else WEIGHT_POWER

    def weights(quantiles: np.ndarray) -> np.ndarray:  # (..., k) quantiles -> (..., k) weights
        raw = np.clip(quantiles, 0.0, None) ** power
        total = raw.sum(axis=-1, keepdims=True)
        return np.where(total > 0, raw / np.where(total > 0, total, 1.0), 1.0 / len(names))

    sizes = {len(defect_z[n]) for n in names}
    if 0 in sizes:
        return {n: 1.0 / len(names) for n in names}
    if rule == "linear" or len(names) == 1 or len(sizes) > 1 or sizes == {1}:
        q = np.array([float(np.quantile(defect_z[n], quantile)) for n in names])
        return dict(zip(names, weights(q).tolist(), strict=True))
    z = np.column_stack([np.asarray(defect_z[n], np.float64) for n in names])  # (defects, detectors)
    point = weights(np.quantile(z, quantile, axis=0))
    rows = np.random.default_rng(0).integers(0, len(z), (WEIGHT_BOOTSTRAPS, len(z)))
    boot = weights(np.quantile(z[rows], quantile, axis=1))
    equal = np.full(len(names), 1.0 / len(names))
    distance = float(((point - equal) ** 2).sum())
    intensity = 1.0 if not distance > 0 else min(1.0, float(boot.var(axis=0).sum()) / distance)
    return dict(zip(names, (equal + (1.0 - intensity) * (point - equal)).tolist(), strict=True))


@dataclass(frozen=True)
class ScoreBlend:
    """The deployed score: ``weight * z(margin) + (1 - weight) * sum_d base_weights[d] * z_d(score)``."""

    weight: float  # the classifier's share: 1 = SegAD's classifier alone, 0 = the base alone
    base: str  # WEIGHTED, ENSEMBLE (every detector, equal weights) or one detector's name
    detector_moments: dict[str, tuple[float, float]]  # detector -> (mean, std) of its scores on good images
    margin_moments: tuple[float, float]  # (mean, std) of the classifier's out-of-fold margins on good images
    detector_weights: dict[str, float] | None = None  # the weighted ensemble's weights (base WEIGHTED only)

    @property
    def base_weights(self) -> dict[str, float]:
        """Each detector's share of the base: equal for the ensemble, one-hot for a detector."""
        if self.base == WEIGHTED:
            if not self.detector_weights:
                raise ValueError("a weighted-ensemble blend needs its detector_weights")
            return dict(self.detector_weights)
        if self.base == ENSEMBLE:
            return {d: 1.0 / len(self.detector_moments) for d in self.detector_moments}
        return {self.base: 1.0}

    @property
    def base_detectors(self) -> list[str]:
        return [d for d, a in self.base_weights.items() if a > 0]

    @property
    def label(self) -> str:
        if self.weight >= 1.0:
            return CLASSIFIER
        if self.weight <= 0.0:
            return self.base
        return f"{self.weight:g} {CLASSIFIER} + {1 - self.weight:g} {self.base}"

    def ensemble_score(self, detector_scores: Mapping[str, np.ndarray]) -> np.ndarray:
        """The naive ensemble of every detector (what a forest may start from)."""
        return ensemble_score(detector_scores, self.detector_moments)

    def base_score(self, detector_scores: Mapping[str, np.ndarray]) -> np.ndarray:
        return weighted_score(detector_scores, self.detector_moments, self.base_weights)

    def score(self, margins: np.ndarray, detector_scores: Mapping[str, np.ndarray]) -> np.ndarray:
        out = np.zeros(len(margins), np.float64)
        if self.weight > 0:
            out += self.weight * z_score(margins, *self.margin_moments)
        if self.weight < 1:
            out += (1.0 - self.weight) * self.base_score(detector_scores)
        return out

    def to_dict(self) -> dict:
        out = {
            "weight": self.weight,
            "base": self.base,
            "detector_moments": {k: list(v) for k, v in self.detector_moments.items()},
            "margin_moments": list(self.margin_moments),
        }
        if self.detector_weights is not None:
            out["detector_weights"] = dict(self.detector_weights)
        return out

    @classmethod
    def from_dict(cls, d: Mapping) -> ScoreBlend:
        moments = {k: (float(v[0]), float(v[1])) for k, v in d["detector_moments"].items()}
        mm = d["margin_moments"]
        weights = d.get("detector_weights")  # absent in models saved before the weighted ensemble
        weights = None if weights is None else {k: float(v) for k, v in weights.items()}
        return cls(float(d["weight"]), str(d["base"]), moments, (float(mm[0]), float(mm[1])), weights)

    @classmethod
    def classifier_only(cls, detectors: Sequence[str]) -> ScoreBlend:
        """The raw margin's ranking (a model saved before selection existed)."""
        return cls(1.0, ENSEMBLE, {d: (0.0, 1.0) for d in detectors}, (0.0, 1.0))


@dataclass(frozen=True)
class Evidence:
    """What the candidates are judged on when it is not the deployed models' own rows (``segad.judging``):
    the classifier's rows scored by the detectors' fold models, and every fit image, out of fold."""

    margins: np.ndarray  # the classifier's out-of-fold margins of its rows, from the fold models' features
    scores: Mapping[str, np.ndarray]  # each detector's fold-model scores of the same rows
    good_margins: np.ndarray  # the fit images' margins, from a classifier fit on those rows (never on them)
    good_scores: Mapping[str, np.ndarray]  # each detector's score of them, from the fold model without them


@dataclass(frozen=True)
class Selection:
    """The chosen blend and every candidate's AUROC on the training rows (the evidence for the choice)."""

    blend: ScoreBlend
    inner_auroc: dict[str, float]  # candidate label -> AUROC on the held-out good rows and the judged defects
    n_good: int
    n_defects: int  # defects the choice was judged on (the real shots; generated ones only without shots)
    weights: dict[str, float] | None = None  # the weighted ensemble's weights, whichever base was chosen


def auroc_standard_error(auroc: float, n_defects: int, n_good: int) -> float:
    """Hanley & McNeil (1982), eq. 2: the AUROC's standard error from its value and the class sizes."""
    a = min(max(auroc, 1e-6), 1 - 1e-6)
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (n_defects - 1) * (q1 - a * a) + (n_good - 1) * (q2 - a * a)) / (n_defects * n_good)
    return float(np.sqrt(max(var, 0.0)))


def paired_difference_se(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """DeLong et al. (1988): the standard error of AUROC(a) - AUROC(b) on the same rows.

    Two scores that share most of their signal (one detector and an ensemble holding it) move
    together from sample to sample, so their difference is far less noisy than either AUROC alone;
    Hanley & McNeil's single-AUROC error ignores that and asks a lead to clear the whole noise."""
    y = np.asarray(y).astype(bool)

    def components(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pos, neg = np.asarray(s, np.float64)[y], np.asarray(s, np.float64)[~y]
        psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        return psi.mean(axis=1), psi.mean(axis=0)  # per defect, per good image

    (va_pos, va_neg), (vb_pos, vb_neg) = components(a), components(b)
    m, n = len(va_pos), len(va_neg)
    if m < 2 or n < 2:
        return float("inf")
    var = np.var(va_pos - vb_pos, ddof=1) / m + np.var(va_neg - vb_neg, ddof=1) / n
    return float(np.sqrt(max(var, 0.0)))


def candidates(
    detectors: Sequence[str],
    detector_moments: dict[str, tuple[float, float]],
    margin_moments: tuple[float, float],
    weights: dict[str, float] | None = None,
) -> list[ScoreBlend]:
    """Every candidate, the default base first: the weighted ensemble (when ``weights`` are given), the
    naive ensemble, each detector, then their blends, and the classifier alone."""
    bases = [ENSEMBLE, *detectors] if len(detectors) > 1 else list(detectors)
    if weights is not None and len(detectors) > 1:
        bases = [WEIGHTED, *bases]

    def blend(w: float, b: str) -> ScoreBlend:
        return ScoreBlend(w, b, detector_moments, margin_moments, weights if b == WEIGHTED else None)

    out = [blend(0.0, b) for b in bases]
    out += [blend(w, b) for w in BLEND_WEIGHTS[1:-1] for b in bases]
    return [*out, blend(1.0, bases[0])]


def _base_scores(
    z: Mapping[str, np.ndarray],
    defects: np.ndarray,
    blend: ScoreBlend,
    weighting: DetectorWeighting = "shrunk",
    defect_z: Mapping[str, np.ndarray] | None = None,
) -> np.ndarray:
    """A blend's base on the judged rows (``z``: each detector's z-scores there); the weighted ensemble's
    defects each with weights read from the other defects (leave one out), as the classifier's margins
    are out of fold (``defect_z``: the defects' z-scores the weights are read from, by default ``z``'s)."""
    out = np.sum([a * z[d] for d, a in blend.base_weights.items()], axis=0)
    if blend.base != WEIGHTED:
        return out
    names = list(z)
    rows = np.flatnonzero(defects)
    defect_z = {d: z[d][rows] for d in names} if defect_z is None else defect_z
    if len(rows) < 2:
        return out
    for j, i in enumerate(rows):
        w = detector_weights({d: np.delete(defect_z[d], j) for d in names}, rule=weighting)
        out[i] = sum(w[d] * z[d][i] for d in names)
    return out


def select(
    oof_margins: np.ndarray,
    detector_scores: Mapping[str, np.ndarray],
    y: np.ndarray,
    real: np.ndarray,
    detector_moments: dict[str, tuple[float, float]],
    prefer_classifier: bool = False,
    lead: Lead = "hanley",
    base: Base = "weighted",
    weight_rule: WeightRule | None = None,
    evidence: Evidence | None = None,
    detector_weighting: DetectorWeighting = "shrunk",
    min_effect: float = MIN_EFFECT,
    weights_from: WeightsFrom = "deployed",
) -> Selection:
    """The final score for one seed, decided on the classifier's training rows (see the module's rule).

    ``prefer_classifier``: the classifier already starts from the ensemble (``--classifier-start
    ensemble``), so it is the default and any other candidate needs a lead of a standard error.
    ``base="equal"``: the naive ensemble is the default base (the rule before the weighted ensemble).
    ``weight_rule``: how the blend weight is chosen; by default ``"paired-1se"`` with ``evidence``, else
    ``"argmax"`` (see the module's rule); ``min_effect``: the one-SE rule's smallest margin.
    ``detector_weighting``: how the weighted ensemble's weights are read (``detector_weights``);
    ``weights_from``: from which shots' z-scores, when judging on ``evidence`` (``WeightsFrom``; by default
    the deployed ones, against a good-image spread the fold models correct: ``pooled_spread``).

    ``oof_margins`` are the classifier's out-of-fold margins on those rows, ``detector_scores`` each
    detector's image scores on the same rows, ``real`` marks rows that are real images (held-out good
    and shots; generated defects are judged only when there are no shots), ``detector_moments`` each
    detector's (mean, std) on the held-out good images (``good_moments``, its z-score reference).

    ``evidence``: judge on it instead (``segad.judging``): every score there comes from the detectors'
    fold models and a classifier on their features, so its z-scores are against its own good rows; the
    deployed blend keeps the deployed models' references (``detector_moments``, ``oof_margins``' good rows)
    and, by default, takes its detector weights from the deployed models' shots.
    """
    if weight_rule is None:
        weight_rule = "paired-1se" if evidence is not None else "argmax"
    y = np.asarray(y).astype(int)
    real = np.asarray(real, bool)
    oof = np.asarray(oof_margins, np.float64)
    margin_moments = good_moments(oof[(y == 0) & np.isfinite(oof)])  # the deployed classifier's reference
    rows = {d: np.asarray(v, np.float64) for d, v in detector_scores.items()}
    held = np.flatnonzero(real & (y == 0))  # the held-out good images among the classifier's rows
    if evidence is not None:
        n_extra = len(evidence.good_margins)
        oof = np.r_[np.asarray(evidence.margins, np.float64), np.asarray(evidence.good_margins, np.float64)]
        y, real = np.r_[y, np.zeros(n_extra, int)], np.r_[real, np.ones(n_extra, bool)]
        rows = {d: np.r_[np.asarray(evidence.scores[d]), np.asarray(evidence.good_scores[d])] for d in rows}
    judged = np.isfinite(oof) & (real | (y == 0)) if (real & (y == 1)).any() else np.isfinite(oof)
    yj = y[judged]
    own = evidence is None  # judged on the deployed models' own rows, against their own references
    judge_moments = detector_moments if own else {d: good_moments(v[judged][yj == 0]) for d, v in rows.items()}
    z = {d: z_score(v[judged], *judge_moments[d]) for d, v in rows.items()}
    defect_z = {d: v[yj == 1] for d, v in z.items()}
    if weights_from != "judged" and not own:  # the deployed models' shots
        shots = np.flatnonzero(judged & (y == 1))  # all among the classifier's rows, in ``yj == 1`` order
        reference = detector_moments  # "held-out": their own mean and spread
        if weights_from == "deployed" and evidence is not None:  # the spread as the fold models correct it
            reference = weight_reference(
                detector_moments,
                {d: np.asarray(v)[held] for d, v in detector_scores.items()},
                {d: np.asarray(v)[held] for d, v in evidence.scores.items()},
                evidence.good_scores,
            )
        defect_z = {d: z_score(np.asarray(v, np.float64)[shots], *reference[d]) for d, v in detector_scores.items()}
    weights = detector_weights(defect_z, rule=detector_weighting) if base == "weighted" else None
    cands = candidates(list(detector_scores), detector_moments, margin_moments, weights)
    zm = z_score(oof[judged], *(margin_moments if own else good_moments(oof[judged][yj == 0])))
    first = {c.base: c for c in reversed(cands)}  # one candidate per base: its base score is the same for all
    bases = {b: _base_scores(z, yj == 1, c, detector_weighting, defect_z) for b, c in first.items()}
    judged_scores = {c.label: c.weight * zm + (1 - c.weight) * bases[c.base] for c in cands}
    inner = {label: image_auroc(yj, s) for label, s in judged_scores.items()}
    n_good, n_defects = int((yj == 0).sum()), int((yj == 1).sum())
    classifier = cands[-1]
    families: dict[str, list[ScoreBlend]] = {}
    for c in cands[:-1]:
        families.setdefault(c.base, []).append(c)
    # Within a base: the best weight, ties to the smaller one.
    best = {b: max([*f, classifier], key=lambda c: (inner[c.label], -c.weight)) for b, f in families.items()}
    if weight_rule == "paired-1se":
        for b, f in families.items():
            top = best[b]
            within = [
                c
                for c in [*f, classifier]  # smallest weight first; the best itself is within (a zero difference)
                if inner[top.label] - inner[c.label]
                <= max(min_effect, paired_difference_se(yj, judged_scores[top.label], judged_scores[c.label]))
            ]
            best[b] = within[0]
    if weight_rule == "separation":  # how far the weaker judged defects sit out, as the detector weights read it
        for b, f in families.items():
            best[b] = max([*f, classifier], key=lambda c: (_separation(judged_scores[c.label], yj), -c.weight))
    order = list(best)
    chosen = classifier if prefer_classifier else best[order[0]]  # else the default base's
    others = order if prefer_classifier else order[1:]

    def error(c: ScoreBlend) -> float:
        if lead == "paired":
            return paired_difference_se(yj, judged_scores[c.label], judged_scores[chosen.label])
        return auroc_standard_error(inner[c.label], n_defects, n_good)

    challengers = [best[b] for b in others if inner[best[b].label] - error(best[b]) > inner[chosen.label]]
    if challengers:
        chosen = max(challengers, key=lambda c: inner[c.label])
    return Selection(chosen, inner, n_good, n_defects, weights)


def _separation(scores: np.ndarray, y: np.ndarray, quantile: float = WEIGHT_QUANTILE) -> float:
    """The ``quantile`` of the defects' scores in standard deviations of the good rows' scores above their mean."""
    good = scores[y == 0]
    sd = float(np.std(good))
    if not sd > 0 or not (y == 1).any():
        return -np.inf
    return float(np.quantile((scores[y == 1] - good.mean()) / sd, quantile))


def choice_summary(selections: Sequence[Selection]) -> str:
    """``"ensemble x6, 0.5 classifier + 0.5 ensemble x4"``: how often each final score was chosen."""
    counts: dict[str, int] = {}
    for sel in selections:
        counts[sel.blend.label] = counts.get(sel.blend.label, 0) + 1
    return ", ".join(f"{k} x{v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
