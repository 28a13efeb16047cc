"""Scores -> per-seed metrics -> mean and std, for every method on the same test set."""

from __future__ import annotations

from dataclasses import dataclass, field

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
