"""What to label next: rank unlabelled images by how much their label would teach the classifier.

Three signals, as active learning for few-shot inspection uses them:

- **near the threshold**: the model is least sure there (``|score - threshold|``, small first);
- **disagreement**: the detectors' z-scores against good images spread widely (one sees a defect, another
  does not), so the label settles which to trust;
- **diversity**: the picks are spread over what drove each score (the (detector, segment) of its top
  reason, segad.explain): the ranked images are taken in turn from each driver, so ten picks are not ten
  views of one scratch; images with no share towards "defect" at all come last.

The first two are combined as the mean of their ranks (no scale to tune); diversity then orders the picks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

from detectors.errors import InputError


@dataclass(frozen=True)
class Suggestion:
    index: int  # into the scored images
    distance: float  # |score - threshold|
    disagreement: float  # spread (std) of the detectors' z-scores
    driver: str  # what drove the score: "padim segment 3", "patchcore image score", or "" when nothing did


def disagreement(detector_z: Mapping[str, np.ndarray]) -> np.ndarray:
    """Per image, the std of the detectors' z-scores (0 with a single detector)."""
    z = np.stack([np.asarray(v, np.float64) for v in detector_z.values()])
    return z.std(axis=0) if len(z) > 1 else np.zeros(z.shape[1])


def suggest(
    scores: np.ndarray,
    threshold: float,
    detector_z: Mapping[str, np.ndarray],
    drivers: Sequence[str],
    n: int,
) -> list[Suggestion]:
    """The ``n`` images to label next, in the order to label them."""
    scores = np.asarray(scores, np.float64)
    if n < 1:
        raise InputError(f"--suggest must be at least 1, got {n}")
    if len(drivers) != len(scores):
        raise InputError(f"{len(drivers)} drivers for {len(scores)} scores")
    distance = np.abs(scores - threshold)
    spread = disagreement(detector_z)
    # Mean rank of "close to the threshold" and "detectors disagree": 1 is the best image on both.
    priority = (rankdata(distance) + rankdata(-spread)) / 2
    order = np.argsort(priority, kind="stable")
    groups: dict[str, list[int]] = {}
    for i in order:  # each driver's images, best first; groups in order of their best image
        groups.setdefault(drivers[i], []).append(int(i))
    # Round robin over the drivers; images with no share towards "defect" (driver "") sit well below the
    # threshold and teach least, so they come only when the others run out.
    unexplained = groups.pop("", [])
    picks: list[int] = []
    queues = list(groups.values())
    while len(picks) < min(n, len(scores) - len(unexplained)):
        for q in queues:
            if q and len(picks) < n:
                picks.append(q.pop(0))
    picks += unexplained[: n - len(picks)]
    return [Suggestion(i, float(distance[i]), float(spread[i]), drivers[i]) for i in picks]


__all__ = ["Suggestion", "disagreement", "suggest"]
