"""Why an image got its score: the final score split exactly into one share per (detector, segment) and
per detector image score.

The deployed score is ``w * z(margin) + (1 - w) * sum_d a_d * z_d(score_d)`` (segad.selection). The
classifier's margin splits into per-feature contributions (``SegadClassifier.contributions``: TreeSHAP
for the forests, the linear terms for logreg); a feature ``d/segJ/stat`` counts for (d, segment J), a
feature ``d/score`` and the base term of detector d for (d, its image score). What is left (the forest's
bias, the moments' offsets) is the constant. So the shares plus the constant give the score, and the
largest positive shares are what pushed the image towards "defect".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from segad.classifier import SegadClassifier
from segad.selection import ScoreBlend, z_score


@dataclass(frozen=True)
class Reason:
    detector: str
    segment: int | None  # None: the detector's image score
    value: float  # this part's additive share of the final score; > 0 pushes towards "defect"

    @property
    def part(self) -> str:
        """``padim segment 3`` or ``patchcore image score``."""
        return f"{self.detector} {'image score' if self.segment is None else f'segment {self.segment}'}"

    def __str__(self) -> str:
        return f"{self.part} {self.value:+.2f}"


@dataclass(frozen=True)
class Explanation:
    reasons: list[Reason]  # every part, largest share first
    constant: float  # the rest of the score: reasons + constant = the score

    def top(self, n: int = 3) -> list[Reason]:
        """The ``n`` largest shares towards "defect" (positive ones only)."""
        return [r for r in self.reasons[:n] if r.value > 0]

    @property
    def top_segment(self) -> Reason | None:
        """The segment that pushed most towards "defect", if any did."""
        return next((r for r in self.reasons if r.segment is not None and r.value > 0), None)


def _part(name: str) -> tuple[str, int | None]:
    """``patchcore/seg3/q995`` -> (patchcore, 3); ``patchcore/score`` -> (patchcore, None)."""
    parts = name.split("/")
    if len(parts) == 3 and parts[1].startswith("seg"):
        return parts[0], int(parts[1][3:])
    return parts[0], None


def explain(
    blend: ScoreBlend,
    classifier: SegadClassifier | None,
    feature_names: Sequence[str],
    X: np.ndarray | None,
    detector_scores: Mapping[str, np.ndarray],
    prior: np.ndarray | None = None,
) -> list[Explanation]:
    """One explanation per row; ``classifier``/``X`` may be None when the blend leaves the classifier out."""
    n = len(next(iter(detector_scores.values())))
    parts: dict[tuple[str, int | None], np.ndarray] = {}
    constant = np.zeros(n)
    if blend.weight > 0:
        if classifier is None or X is None:
            raise ValueError("this blend uses the classifier: pass it and the feature rows")
        contribs = classifier.contributions(X, prior)
        mean, std = blend.margin_moments
        scale = blend.weight / std
        for j, name in enumerate(feature_names):
            key = _part(name)
            parts[key] = parts.get(key, 0.0) + scale * contribs[:, j]
        constant += scale * (contribs[:, -1] - mean)
    if blend.weight < 1:
        for d, a in blend.base_weights.items():
            if a <= 0:
                continue
            z = z_score(detector_scores[d], *blend.detector_moments[d])
            parts[(d, None)] = parts.get((d, None), 0.0) + (1 - blend.weight) * a * z
    out = []
    for i in range(n):
        reasons = sorted((Reason(d, s, float(v[i])) for (d, s), v in parts.items()), key=lambda r: -r.value)
        out.append(Explanation(reasons, float(constant[i])))
    return out


__all__ = ["Explanation", "Reason", "explain"]
