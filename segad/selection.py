"""Choosing the final score inside the training data: SegAD's classifier, the ensemble, a detector, or a blend.

With ten labelled defects a forest over hundreds of statistics can end up below the image scores it
was handed (ELPV, textures), while on products whose components vary benignly it is the only thing
that works. Which case a run is in cannot be known in advance, and must not be read off the test set.
So every seed decides on its own training rows: each candidate score is computed for the held-out good
images and the shots (the classifier's part out of fold, from models that never saw the row), and
their AUROC there (the inner AUROC) decides.

Every candidate is one formula, ``w * z(classifier margin) + (1 - w) * mean_d z_d(detector score)``:
z-scores against good images (detectors: the held-out good images; the classifier: its out-of-fold
margins on them), ``w`` in ``BLEND_WEIGHTS``, the base either the naive ensemble (every detector) or one
detector. ``w = 0`` is the ensemble or that detector alone, ``w = 1`` the classifier alone.

The rule (measured against others by ``experiments/ablate_selection.py``):

- within each base, the weight with the best inner AUROC (ties: the smaller weight). One parameter
  along one line is little to over-fit, and it is where the lift is: on the complex product the
  classifier is worth 10 points, on ELPV mono nothing, and the weight follows;
- the base is the ensemble unless a single detector's best beats the ensemble's best by more than one
  standard error (Hanley & McNeil, 1982): the argmax over a dozen noisy candidates is biased up, and
  picking single detectors on leads of 1-3 inner points lost 1.7 test points on two ELPV mono seeds.
  A detector that is clearly better than the ensemble (the others being useless on a set) still wins.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from segad.evaluate import good_moments
from segad.metrics import image_auroc

BLEND_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
# How a challenger's lead is judged: Hanley-McNeil error of its AUROC (shipped), or DeLong's paired error
# of the difference (measured in experiments/ablate_selection.py: no gain).
Lead = Literal["hanley", "paired"]
ENSEMBLE = "ensemble"
CLASSIFIER = "classifier"


def _z(values: np.ndarray, mean: float, std: float) -> np.ndarray:
    return (np.asarray(values, np.float64) - mean) / std


def ensemble_score(detector_scores: Mapping[str, np.ndarray], moments: Mapping[str, tuple[float, float]]) -> np.ndarray:
    """The naive ensemble: each detector's z-score against good images (``moments``), averaged."""
    return np.mean([_z(detector_scores[d], *m) for d, m in moments.items()], axis=0)


@dataclass(frozen=True)
class ScoreBlend:
    """The deployed score: ``weight * z(margin) + (1 - weight) * mean over base detectors of z(score)``."""

    weight: float  # the classifier's share: 1 = SegAD's classifier alone, 0 = the base alone
    base: str  # "ensemble" (every detector) or one detector's name
    detector_moments: dict[str, tuple[float, float]]  # detector -> (mean, std) of its scores on good images
    margin_moments: tuple[float, float]  # (mean, std) of the classifier's out-of-fold margins on good images

    @property
    def base_detectors(self) -> list[str]:
        return list(self.detector_moments) if self.base == ENSEMBLE else [self.base]

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
        moments = {d: self.detector_moments[d] for d in self.base_detectors}
        return ensemble_score(detector_scores, moments)

    def score(self, margins: np.ndarray, detector_scores: Mapping[str, np.ndarray]) -> np.ndarray:
        out = np.zeros(len(margins), np.float64)
        if self.weight > 0:
            out += self.weight * _z(margins, *self.margin_moments)
        if self.weight < 1:
            out += (1.0 - self.weight) * self.base_score(detector_scores)
        return out

    def to_dict(self) -> dict:
        return {
            "weight": self.weight,
            "base": self.base,
            "detector_moments": {k: list(v) for k, v in self.detector_moments.items()},
            "margin_moments": list(self.margin_moments),
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> ScoreBlend:
        moments = {k: (float(v[0]), float(v[1])) for k, v in d["detector_moments"].items()}
        mm = d["margin_moments"]
        return cls(float(d["weight"]), str(d["base"]), moments, (float(mm[0]), float(mm[1])))

    @classmethod
    def classifier_only(cls, detectors: Sequence[str]) -> ScoreBlend:
        """The raw margin's ranking (a model saved before selection existed)."""
        return cls(1.0, ENSEMBLE, {d: (0.0, 1.0) for d in detectors}, (0.0, 1.0))


@dataclass(frozen=True)
class Selection:
    """The chosen blend and every candidate's AUROC on the training rows (the evidence for the choice)."""

    blend: ScoreBlend
    inner_auroc: dict[str, float]  # candidate label -> AUROC on the held-out good rows and the judged defects
    n_good: int
    n_defects: int  # defects the choice was judged on (the real shots; generated ones only without shots)


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
    detectors: Sequence[str], detector_moments: dict[str, tuple[float, float]], margin_moments: tuple[float, float]
) -> list[ScoreBlend]:
    """Every candidate, simplest first: the ensemble, each detector, blends, the classifier alone."""
    bases = [ENSEMBLE, *detectors] if len(detectors) > 1 else list(detectors)
    out = [ScoreBlend(0.0, b, detector_moments, margin_moments) for b in bases]
    out += [ScoreBlend(w, b, detector_moments, margin_moments) for w in BLEND_WEIGHTS[1:-1] for b in bases]
    return [*out, ScoreBlend(1.0, bases[0], detector_moments, margin_moments)]


def select(
    oof_margins: np.ndarray,
    detector_scores: Mapping[str, np.ndarray],
    y: np.ndarray,
    real: np.ndarray,
    detector_moments: dict[str, tuple[float, float]],
    prefer_classifier: bool = False,
    lead: Lead = "hanley",
) -> Selection:
    """The final score for one seed, decided on the classifier's training rows (see the module's rule).

    ``prefer_classifier``: the classifier already starts from the ensemble (``--classifier-start
    ensemble``), so it is the default and any other candidate needs a lead of a standard error.

    ``oof_margins`` are the classifier's out-of-fold margins on those rows, ``detector_scores`` each
    detector's image scores on the same rows, ``real`` marks rows that are real images (held-out good
    and shots; generated defects are judged only when there are no shots), ``detector_moments`` each
    detector's (mean, std) on the held-out good images (``good_moments``, its z-score reference).
    """
    y = np.asarray(y).astype(int)
    real = np.asarray(real, bool)
    oof = np.asarray(oof_margins, np.float64)
    judged = np.isfinite(oof) & (real | (y == 0)) if (real & (y == 1)).any() else np.isfinite(oof)
    margin_moments = good_moments(oof[(y == 0) & np.isfinite(oof)])
    cands = candidates(list(detector_scores), detector_moments, margin_moments)
    yj = y[judged]
    judged_scores = {
        c.label: c.score(oof[judged], {d: np.asarray(v)[judged] for d, v in detector_scores.items()}) for c in cands
    }
    inner = {label: image_auroc(yj, s) for label, s in judged_scores.items()}
    n_good, n_defects = int((yj == 0).sum()), int((yj == 1).sum())
    classifier = cands[-1]
    families: dict[str, list[ScoreBlend]] = {}
    for c in cands[:-1]:
        families.setdefault(c.base, []).append(c)
    # Within a base: the best weight, ties to the smaller one.
    best = {b: max([*f, classifier], key=lambda c: (inner[c.label], -c.weight)) for b, f in families.items()}
    bases = list(best)
    chosen = classifier if prefer_classifier else best[bases[0]]  # else the ensemble's (or the one detector's)
    others = bases if prefer_classifier else bases[1:]

    def error(c: ScoreBlend) -> float:
        if lead == "paired":
            return paired_difference_se(yj, judged_scores[c.label], judged_scores[chosen.label])
        return auroc_standard_error(inner[c.label], n_defects, n_good)

    challengers = [best[b] for b in others if inner[best[b].label] - error(best[b]) > inner[chosen.label]]
    if challengers:
        chosen = max(challengers, key=lambda c: inner[c.label])
    return Selection(chosen, inner, n_good, n_defects)


def choice_summary(selections: Sequence[Selection]) -> str:
    """``"ensemble x6, 0.5 classifier + 0.5 ensemble x4"``: how often each final score was chosen."""
    counts: dict[str, int] = {}
    for sel in selections:
        counts[sel.blend.label] = counts.get(sel.blend.label, 0) + 1
    return ", ".join(f"{k} x{v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
