"""Scores -> per-seed metrics -> mean and std, for every method on the same test set."""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np

from segad.metrics import fpr_at_tpr, image_auroc


@dataclass(frozen=True)
class SeedScore:
    seed: int
    auroc: float
    fpr95: float


@dataclass
class MethodResult:
    name: str
    per_seed: list[SeedScore] = field(default_factory=list)

    def add(self, seed: int, labels: np.ndarray, scores: np.ndarray) -> SeedScore:
        row = SeedScore(seed, image_auroc(labels, scores), fpr_at_tpr(labels, scores, 0.95))
        self.per_seed.append(row)
        return row

    def _stat(self, key: str, fn) -> float:
        return float(fn([getattr(r, key) for r in self.per_seed]))

    @property
    def auroc_mean(self) -> float:
        return self._stat("auroc", np.mean)

    @property
    def auroc_std(self) -> float:
        return self._stat("auroc", np.std)

    @property
    def fpr95_mean(self) -> float:
        return self._stat("fpr95", np.mean)

    @property
    def fpr95_std(self) -> float:
        return self._stat("fpr95", np.std)

    def to_dict(self) -> dict:
        return {
            "auroc_mean": self.auroc_mean,
            "auroc_std": self.auroc_std,
            "fpr95_mean": self.fpr95_mean,
            "fpr95_std": self.fpr95_std,
            "per_seed": [r.__dict__ for r in self.per_seed],
        }


def good_moments(reference: np.ndarray) -> tuple[float, float]:
    """(mean, std) of scores on good images, the z-score reference (std 1 when they are constant)."""
    ref = np.asarray(reference, np.float64)
    ref = ref[np.isfinite(ref)]
    std = float(np.std(ref)) if ref.size else 0.0
    return (float(np.mean(ref)) if ref.size else 0.0), (std if std > 0 else 1.0)


def normalise_scores(scores: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """z-scores against good reference images, so detectors on different scales can be averaged."""
    mean, std = good_moments(reference)
    return (np.asarray(scores, np.float64) - mean) / std


def format_table(results: list[MethodResult]) -> str:
    width = max(len("method"), *(len(r.name) for r in results))
    lines = [f"{'method':<{width}}  {'image AUROC':>15}  {'FPR@95TPR':>15}"]
    for r in results:
        lines.append(
            f"{r.name:<{width}}  {r.auroc_mean:>7.4f} ± {r.auroc_std:.4f}  {r.fpr95_mean:>7.4f} ± {r.fpr95_std:.4f}"
        )
    return "\n".join(lines)


@dataclass(frozen=True)
class PairedDifference:
    """``a - b`` over seeds (mean of the per-seed differences) with its interval over resamples of the
    test images: how far the seeds' mean could move on another draw of a test set this size."""

    auroc: float
    auroc_interval: tuple[float, float]
    fpr95: float
    fpr95_interval: tuple[float, float]


def paired_difference(
    per_seed: list[tuple[np.ndarray, np.ndarray, np.ndarray]], resamples: int = 200, level: float = 0.95, seed: int = 0
) -> PairedDifference:
    """Image AUROC and FPR@95TPR of score ``a`` minus score ``b`` on each seed's test set ``(labels, a,
    b)``, averaged over seeds, with a normal interval from the standard error over ``resamples``
    bootstrap draws of the test images (within each class, so every draw keeps the test set's class
    sizes; the same draw scores both, so what the two scores share cancels). Not the percentile
    interval: FPR@95TPR thresholds at a quantile of the defects, and resampled that quantile shifts, so
    the percentile interval of the difference can miss the estimate itself (measured on the DRA split).
    The std over SegAD's seeds only shows the shots' noise: on a fixed test set it can be far smaller
    than the test set's own, which decides whether a difference of a test image or two is there at all."""
    rng = np.random.default_rng(seed)

    def diff(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
        return image_auroc(y, a) - image_auroc(y, b), fpr_at_tpr(y, a) - fpr_at_tpr(y, b)

    point = np.mean([diff(*row) for row in per_seed], axis=0)
    draws = np.empty((resamples, 2))
    for r in range(resamples):
        rows = []
        for y, a, b in per_seed:
            y = np.asarray(y)
            good, bad = np.flatnonzero(y == 0), np.flatnonzero(y == 1)
            i = np.r_[rng.choice(good, len(good)), rng.choice(bad, len(bad))]
            rows.append(diff(y[i], np.asarray(a)[i], np.asarray(b)[i]))
        draws[r] = np.mean(rows, axis=0)
    half = NormalDist().inv_cdf(0.5 + level / 2) * draws.std(axis=0)
    lo, hi = point - half, point + half
    return PairedDifference(
        float(point[0]), (float(lo[0]), float(hi[0])), float(point[1]), (float(lo[1]), float(hi[1]))
    )
