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
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np

from detectors.errors import InputError
from segad.supervised import SUPERVISED, SupervisedConfig, SupervisedModel

if TYPE_CHECKING:
    from segad.prepare import Prepared
    from segad.protocol import SeedSplit

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
    fold_seconds: float = 0.0  # a stacked input's cross-fitting fits (segad.crossfit), beside ``seconds``


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

    def add(self, fit: BaselineFit, model: SupervisedModel) -> None:
        """One more seed's fit; the first seed's model is kept, as SegAD's first seed's classifier is."""
        self.fits.append(fit)
        if self.model is None:
            self.model = model

    def summary(self) -> dict:
        return {
            "row": self.row,
            "config": self.config.to_params(),
            "good_images": self.good_images,
            "fit_seconds": [round(f.seconds, 2) for f in self.fits],
            "final_loss": [f.losses[-1] if f.losses else None for f in self.fits],
            "n_good": self.fits[0].n_good if self.fits else 0,
            "n_defects": [f.n_defects for f in self.fits],
            "fold_fit_seconds": [round(f.fold_seconds, 2) for f in self.fits],
        }


def good_training_images(prep: Prepared, good: GoodImages) -> np.ndarray:
    """The good images a baseline learns from, model-ready (the same for every seed: load once)."""
    held_out = prep.score_set.load(list(range(prep.n_hold)))
    if good == "holdout":
        return held_out
    return np.concatenate([prep.fit_set.load(list(range(len(prep.fit_set)))), held_out])


def generated_images(prep: Prepared) -> np.ndarray:
    """The generated defects, model-ready (the same for every seed: load once)."""
    return prep.gen_set.load(list(range(len(prep.gen_set))))


def seeded(config: SupervisedConfig, seed: int) -> SupervisedConfig:
    """A baseline's config with its split's seed as its training seed (its batches and head init)."""
    return replace(config, seed=seed)


def fit_seed(
    configs: dict[str, SupervisedConfig],
    prep: Prepared,
    sp: SeedSplit,
    normal: np.ndarray,
    generated: np.ndarray,
    log: Callable[[str], None] = lambda _: None,
    unscored: Collection[str] = (),
) -> dict[str, tuple[BaselineFit, SupervisedModel]]:
    """Fit every baseline, with the split's seed as its training seed, on the good images ``normal`` and
    the seed's defects (its shots, then ``generated``); score the seed's test images, each decoded once
    for all of them, except for the ``unscored`` ones (stacked inputs: ``cross_fit`` scores their test
    images with their maps; their ``BaselineFit.scores`` are left empty for it)."""
    if not configs:
        return {}
    shots = prep.score_set.load([prep.n_hold + int(i) for i in sp.train_defects])
    defects = np.concatenate([shots, generated]) if len(generated) else shots
    if not len(defects):
        names = ",".join(configs)
        raise InputError(f"{names} learns from labelled defects: use --shots >= 1 or --generated")
    fitted: dict[str, tuple[SupervisedModel, float]] = {}
    for name, config in configs.items():
        log(f"{name}: seed {sp.seed}: fitting on {len(normal)} good images and {len(defects)} defects ...")
        t0 = time.perf_counter()
        model = SUPERVISED[name](seeded(config, sp.seed)).fit(normal, defects)
        fitted[name] = model, time.perf_counter() - t0
        log(f"{name}: seed {sp.seed}: fit {fitted[name][1]:.1f}s, final loss {model.losses_[-1]:.3f}")
    test = [prep.n_hold + int(i) for i in sp.test]
    scores: dict[str, list[np.ndarray]] = {name: [] for name in fitted}
    scored = [name for name in fitted if name not in unscored]
    for s in range(0, len(test), SCORE_CHUNK) if scored else ():
        batch = prep.score_set.load(test[s : s + SCORE_CHUNK])
        for name in scored:
            scores[name].append(fitted[name][0].decision_function(batch))
    return {
        name: (
            BaselineFit(
                sp.seed,
                seconds,
                list(model.losses_),
                np.concatenate(scores[name]) if scores[name] else np.empty(0, np.float32),
                len(normal),
                len(defects),
            ),
            model,
        )
        for name, (model, seconds) in fitted.items()
    }


def parse_supervised(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    for n in names:
        if n not in SUPERVISED:
            raise InputError(f"--supervised: unknown method {n!r}; known: {', '.join(SUPERVISED)}")
    if len(set(names)) != len(names):
        raise InputError(f"--supervised {text}: a method is named twice")
    return names


__all__ = [
    "BaselineFit",
    "BaselineRun",
    "GoodImages",
    "check_good_images",
    "fit_seed",
    "generated_images",
    "good_training_images",
    "parse_supervised",
    "seeded",
]
