"""SegAD's evaluation protocol: who fits the detectors, who trains the classifier, who is tested.

Detectors fit once on train/good minus a held-out share (a fixed draw, so maps are computed once
and cached). For each seed, ``shots`` defects are drawn from the test defects to train the
classifier together with the held-out good images; the seed's test set is all test/good plus the
remaining defects, and every method is scored on that same set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from segad.data.samples import Dataset, DatasetError, Sample

SEGAD_SEEDS = (333, 576, 725, 823, 831, 902, 226, 598, 874, 589)
HOLDOUT_SEED = 0


@dataclass(frozen=True)
class FitSplit:
    """The detectors' fit set and the held-out good images the classifier trains on."""

    fit_good: tuple[Sample, ...]
    holdout_good: tuple[Sample, ...]


@dataclass(frozen=True)
class SeedSplit:
    """Indices into ``Dataset.test`` for one seed."""

    seed: int
    train_defects: np.ndarray
    test: np.ndarray


def seeds(n: int) -> tuple[int, ...]:
    if not 1 <= n <= len(SEGAD_SEEDS):
        raise ValueError(f"--seeds must be between 1 and {len(SEGAD_SEEDS)} (SegAD's list), got {n}")
    return SEGAD_SEEDS[:n]


def fit_split(ds: Dataset, holdout_fraction: float = 0.1) -> FitSplit:
    good = ds.train_good
    if not 0.0 <= holdout_fraction < 1.0:
        raise ValueError(f"held-out fraction must be in [0, 1), got {holdout_fraction}")
    n_hold = round(holdout_fraction * len(good))
    if len(good) - n_hold < 1:
        raise DatasetError(f"{ds.name}/{ds.category}: {len(good)} good training images leave none to fit on")
    order = np.random.default_rng(HOLDOUT_SEED).permutation(len(good))
    hold = set(order[:n_hold].tolist())
    return FitSplit(
        tuple(s for i, s in enumerate(good) if i not in hold), tuple(s for i, s in enumerate(good) if i in hold)
    )


def seed_split(ds: Dataset, shots: int, seed: int) -> SeedSplit:
    labels = np.array([s.label for s in ds.test])
    defects = np.flatnonzero(labels == 1)
    if shots < 0:
        raise ValueError(f"--shots must be >= 0, got {shots}")
    if shots >= len(defects):
        raise DatasetError(
            f"--shots {shots}: {ds.name}/{ds.category} has {len(defects)} test defects, and at least one must stay "
            f"for testing; use --shots {max(len(defects) - 1, 0)} or fewer"
        )
    drawn = np.sort(np.random.default_rng(seed).choice(defects, size=shots, replace=False))
    test = np.setdiff1d(np.arange(len(labels)), drawn)
    return SeedSplit(seed, drawn, test)


def check_evaluable(ds: Dataset) -> None:
    """Fail before any long work when the set cannot be evaluated at all."""
    test = ds.test
    if not any(s.label == 1 for s in test):
        raise DatasetError(f"{ds.name}/{ds.category} has no defect images in its test split: nothing to detect")
    if not any(s.label == 0 for s in test):
        raise DatasetError(f"{ds.name}/{ds.category} has no good images in its test split: AUROC needs both")
