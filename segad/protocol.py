"""SegAD's evaluation protocol: who fits the detectors, who trains the classifier, who is tested.

Detectors fit once on train/good minus a held-out share (a fixed draw, so maps are computed once
and cached). For each seed, ``shots`` defects are drawn from the test defects to train the
classifier together with the held-out good images; the seed's test set is all test/good plus the
remaining defects, and every method is scored on that same set.

``segad.tune`` first reserves a share of the test defects for itself (``tuning_defects``): they are
drawn as no seed's shots and sit in no seed's test set, so the configuration it selects is reported
on images the selection never saw.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detectors.errors import InputError
from segad.data.samples import Dataset, DatasetError, Sample

SEGAD_SEEDS = (333, 576, 725, 823, 831, 902, 226, 598, 874, 589)
HOLDOUT_SEED = 0
TUNING_SEED = 1


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
        raise InputError(f"--seeds must be between 1 and {len(SEGAD_SEEDS)} (SegAD's list), got {n}")
    return SEGAD_SEEDS[:n]


def fit_split(ds: Dataset, holdout_fraction: float = 0.1) -> FitSplit:
    good = ds.train_good
    if not 0.0 <= holdout_fraction < 1.0:
        raise InputError(f"--holdout must be in [0, 1), got {holdout_fraction}")
    n_hold = round(holdout_fraction * len(good))
    if len(good) - n_hold < 1:
        raise DatasetError(f"{ds.name}/{ds.category}: {len(good)} good training images leave none to fit on")
    order = np.random.default_rng(HOLDOUT_SEED).permutation(len(good))
    hold = set(order[:n_hold].tolist())
    return FitSplit(
        tuple(s for i, s in enumerate(good) if i not in hold), tuple(s for i, s in enumerate(good) if i in hold)
    )


def tuning_defects(ds: Dataset, share: float) -> np.ndarray:
    """Indices into ``Dataset.test`` of the defects reserved for tuning: a fixed draw of ``share`` of them."""
    if not 0.0 <= share < 1.0:
        raise InputError(f"--tuning-share must be in [0, 1), got {share}")
    defects = np.flatnonzero(np.array([s.label for s in ds.test]) == 1)
    n = round(share * len(defects))
    return np.sort(np.random.default_rng(TUNING_SEED).choice(defects, size=n, replace=False))


def seed_split(ds: Dataset, shots: int, seed: int, reserved: np.ndarray | None = None) -> SeedSplit:
    """One seed's shots and test set; ``reserved`` test images (tuning defects) are in neither."""
    labels = np.array([s.label for s in ds.test])
    reserved = np.asarray([] if reserved is None else reserved, np.int64)
    defects = np.setdiff1d(np.flatnonzero(labels == 1), reserved)
    if shots < 0:
        raise InputError(f"--shots must be >= 0, got {shots}")
    if shots >= len(defects):
        kept = f" (after {len(reserved)} reserved for tuning)" if len(reserved) else ""
        raise DatasetError(
            f"--shots {shots}: {ds.name}/{ds.category} has {len(defects)} test defects{kept}, and at least one must "
            f"stay for testing; use --shots {max(len(defects) - 1, 0)} or fewer"
        )
    drawn = np.sort(np.random.default_rng(seed).choice(defects, size=shots, replace=False))
    test = np.setdiff1d(np.arange(len(labels)), np.r_[drawn, reserved])
    return SeedSplit(seed, drawn, test)


def check_evaluable(ds: Dataset) -> None:
    """Fail before any long work when the set cannot be evaluated at all."""
    test = ds.test
    if not any(s.label == 1 for s in test):
        raise DatasetError(f"{ds.name}/{ds.category} has no defect images in its test split: nothing to detect")
    if not any(s.label == 0 for s in test):
        raise DatasetError(f"{ds.name}/{ds.category} has no good images in its test split: AUROC needs both")
