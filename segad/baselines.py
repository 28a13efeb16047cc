"""Supervised few-shot baselines in ``segad.train``'s table, fit per seed next to SegAD.

SegAD's paper compares its stacking with methods that learn end to end from the same few labelled
defects (its appendix B); a user choosing between them needs both on the same seeds, shots and test
images. A baseline sees its seed's shots, so it is fit once per seed and never cached or shared
across seeds (the detectors' map cache holds one-class fits only). Its first seed's model is the one
saved with the pipeline, as SegAD's first seed's classifier is.

What a baseline learns from (``GoodImages``):

- ``all`` (default): every good training image (the detectors' fit images and SegAD's held-out ones),
  the papers' protocol; SegAD as a whole sees the same images;
- ``holdout``: only the held-out good images SegAD's classifier trains on.

Defects: the seed's shots, plus the generated defects when ``--generated`` asks for them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np

from detectors.errors import InputError
from segad.supervised import SUPERVISED, SupervisedConfig, SupervisedModel

if TYPE_CHECKING:
    from segad.protocol import SeedSplit
    from segad.train import Prepared

GoodImages = Literal["all", "holdout"]
SCORE_CHUNK = 128  # test images decoded and scored at a time: a large test set never sits in memory whole


def check_good_images(value: str) -> GoodImages:
    if value not in get_args(GoodImages):
        raise InputError(f"--supervised-good must be all or holdout, got {value!r}")
    return value  # type: ignore[return-value]


@dataclass(frozen=True)
class BaselineFit:
    """One seed's fit of one baseline."""

    seed: int
    seconds: float  # fit wall time
    losses: list[float]  # the training loss curve (per step, or per 1% of the steps beyond 100)
    scores: np.ndarray  # on the seed's test images, in SeedSplit.test order
    n_good: int
    n_defects: int


@dataclass
class BaselineRun:
    """Every seed's fit of one baseline, and the first seed's model (the one saved)."""

    name: str
    config: SupervisedConfig
    good_images: GoodImages
    fits: list[BaselineFit]
    model: SupervisedModel | None = None

    @property
    def row(self) -> str:
        """Its row in the table and its MLflow run: ``classifier`` is SegAD's own classifier's row."""
        return SUPERVISED[self.name].row

    def summary(self) -> dict:
        return {
            "row": self.row,
            "config": self.config.to_params(),
            "good_images": self.good_images,
            "fit_seconds": [round(f.seconds, 2) for f in self.fits],
            "final_loss": [f.losses[-1] if f.losses else None for f in self.fits],
            "n_good": self.fits[0].n_good if self.fits else 0,
            "n_defects": [f.n_defects for f in self.fits],
        }


def good_training_images(prep: Prepared, good: GoodImages) -> np.ndarray:
    """The good images a baseline learns from, model-ready (the same for every seed: load once)."""
    held_out = prep.score_set.load(list(range(prep.n_hold)))
    if good == "holdout":
        return held_out
    return np.concatenate([prep.fit_set.load(list(range(len(prep.fit_set)))), held_out])


def defect_training_images(prep: Prepared, sp: SeedSplit) -> np.ndarray:
    """The seed's shots, then every generated defect."""
    shots = prep.score_set.load([prep.n_hold + int(i) for i in sp.train_defects])
    if not len(prep.gen_set):
        return shots
    return np.concatenate([shots, prep.gen_set.load(list(range(len(prep.gen_set))))])


def fit_seed(
    name: str, config: SupervisedConfig, prep: Prepared, sp: SeedSplit, normal: np.ndarray
) -> tuple[BaselineFit, SupervisedModel]:
    """Fit ``name`` on the good images ``normal`` and the seed's defects; score the seed's test images."""
    model_class = SUPERVISED[name]
    defects = defect_training_images(prep, sp)
    if not len(defects):
        raise InputError(f"--supervised {name} learns from labelled defects: use --shots >= 1 or --generated")
    t0 = time.perf_counter()
    model = model_class(config).fit(normal, defects)
    seconds = time.perf_counter() - t0
    test = [prep.n_hold + int(i) for i in sp.test]
    chunks = [test[s : s + SCORE_CHUNK] for s in range(0, len(test), SCORE_CHUNK)]
    scores = np.concatenate([model.decision_function(prep.score_set.load(c)) for c in chunks])
    fit = BaselineFit(sp.seed, seconds, list(model.losses_), scores, len(normal), len(defects))
    return fit, model


def parse_supervised(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    for n in names:
        if n not in SUPERVISED:
            raise InputError(f"--supervised: unknown method {n!r}; known: {', '.join(SUPERVISED)}")
    if len(set(names)) != len(names):
        raise InputError(f"--supervised {text}: a method is named twice")
    return names


def seed_configs(configs: dict[str, SupervisedConfig], seed: int) -> dict[str, SupervisedConfig]:
    """Each baseline's config with the seed's own training seed (its batches and head init)."""
    return {n: type(c).from_params({**c.to_params(), "seed": seed}) for n, c in configs.items()}


__all__ = [
    "BaselineFit",
    "BaselineRun",
    "GoodImages",
    "check_good_images",
    "fit_seed",
    "good_training_images",
    "parse_supervised",
    "seed_configs",
]
