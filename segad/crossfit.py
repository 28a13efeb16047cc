"""A supervised baseline's maps as SegAD inputs (``--detectors patchcore,padim,devnet``), cross-fitted per seed.

DevNet and DRA score patches, so their maps can be pooled per segment like a one-class detector's. But
they learn from the seed's shots, so they are fit per seed and never cached, and SegAD's classifier
trains on the very rows they learn from (held-out good images, shots, generated defects). A model
scores its own training rows in-sample: its shots glow, its good rows sit at the loss's target, and a
classifier trained on such rows trusts the input far more than its maps on unseen images deserve.
So the rows are dealt into K folds (a generated defect with its source image, ``fold_ids``) and each
row's map comes from a model fit without its fold; every other image (the seed's test set) is scored
by the model fit on all rows, which is also the baseline's own row in the table. It costs K extra fits
per seed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from detectors.base import DetectorOutput, ImageBatch
from detectors.errors import InputError
from detectors.maps import to_image_maps
from segad.calibration import fold_ids
from segad.maps import as_stored, check_maps
from segad.supervised import SUPERVISED, SupervisedConfig, SupervisedModel

if TYPE_CHECKING:
    from segad.maps import ImageSet
    from segad.prepare import Prepared
    from segad.protocol import SeedSplit

STACK_FOLDS = 3  # folds of the classifier's rows: K fits per seed beside the full one (10 shots: 6-7 per fit)
MAP_SIGMA = 4.0  # the blur our one-class detectors give their upsampled patch scores (PatchCore's, anomalib's)
CHUNK = 128  # images decoded and scored at a time


def check_stackable(name: str) -> None:
    if not SUPERVISED[name].stackable:
        usable = ", ".join(n for n, m in SUPERVISED.items() if m.stackable)
        raise InputError(
            f"--detectors {name}: {name} gives one score per image, no anomaly map SegAD could pool per segment; "
            f"stack {usable}, or use --supervised {name} for its own row"
        )


class SupervisedInput:
    """A fitted supervised model in a detector's seat: its patch scores upsampled and blurred to the image
    size as the map (as our one-class detectors make theirs), its own image score as the score."""

    def __init__(self, model: SupervisedModel) -> None:
        if not model.is_fitted():
            raise InputError(f"{type(model).__name__} is not fitted; fit it before stacking its maps")
        self.model = model

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def config(self) -> SupervisedConfig:
        return self.model.config

    def predict(self, images: ImageBatch) -> DetectorOutput:
        patches = torch.from_numpy(self.model.patch_scores(images))
        maps = to_image_maps(patches, self.model.image_size_, MAP_SIGMA).numpy()
        return DetectorOutput(maps, self.model.decision_function(images))

    def save(self, path: str | Path) -> Path:
        return self.model.save(path)

    @classmethod
    def load(cls, path: str | Path, name: str, device: str = "auto") -> SupervisedInput:
        return cls(SUPERVISED[name].load(path, device))


def predict_images(det: SupervisedInput, images: np.ndarray, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Maps at the cache's float16 (as every detector's are stored) and scores of a model-ready batch."""
    out = det.predict(images)
    check_maps(det.name, out.maps, names)
    return as_stored(out.maps), out.scores.astype(np.float32)


def predict_set(det: SupervisedInput, images: ImageSet, idx: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """``predict_images`` over ``images[idx]``, decoded ``CHUNK`` at a time."""
    idx = list(idx)
    parts = [idx[s : s + CHUNK] for s in range(0, len(idx), CHUNK)]
    out = [predict_images(det, images.load(part), [images.name(i) for i in part]) for part in parts]
    return np.concatenate([m for m, _ in out]), np.concatenate([sc for _, sc in out])


@dataclass(frozen=True)
class SeedMaps:
    """One seed's maps of a stacked supervised input, on the score set's rows it needs."""

    name: str
    rows: np.ndarray  # indices into the score set: held-out good, the seed's shots, its test images
    maps: np.ndarray  # (len(rows), H, W) float16: out of fold for held-out good and shots, else the full fit's
    scores: np.ndarray  # (len(rows),)
    gen_maps: np.ndarray  # (n_generated, H, W), out of fold
    gen_scores: np.ndarray
    folds: int
    fold_seconds: float  # the K fold fits together

    def scores_on(self, n: int) -> np.ndarray:
        """Scores over all ``n`` score-set images, NaN on the rows this seed never reads."""
        out = np.full(n, np.nan, np.float32)
        out[self.rows] = self.scores
        return out


def fold_fits(
    model: type[SupervisedModel],
    config: SupervisedConfig,
    fixed: np.ndarray,
    good: np.ndarray,
    good_fold: np.ndarray,
    defects: np.ndarray,
    defect_fold: np.ndarray,
    k: int,
    log: Callable[[str], None] = lambda _: None,
    label: str = "",
) -> list[SupervisedInput]:
    """K fits, fold ``f``'s on the ``fixed`` good images and every good image and defect not in fold ``f``."""
    models = []
    for f in range(k):
        normal, bad = np.concatenate([fixed, good[good_fold != f]]), defects[defect_fold != f]
        log(f"{model.name}: {label}fold {f + 1}/{k}: fitting on {len(normal)} good images and {len(bad)} defects")
        models.append(SupervisedInput(model(config).fit(normal, bad)))
    return models


def own_fold(
    models: Sequence[SupervisedInput], images: np.ndarray, fold: np.ndarray, names: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Each image's map and score from the model of its fold (the one fit without it)."""
    size = models[0].model.image_size_
    maps, scores = np.empty((len(images), *size), np.float16), np.empty(len(images), np.float32)
    for f, det in enumerate(models):
        if len(held := np.flatnonzero(fold == f)):
            maps[held], scores[held] = predict_images(det, images[held], [names[i] for i in held])
    return maps, scores


def cross_fit(
    full: SupervisedModel,
    prep: Prepared,
    sp: SeedSplit,
    normal: np.ndarray,
    generated: np.ndarray,
    folds: int = STACK_FOLDS,
    log: Callable[[str], None] = lambda _: None,
) -> SeedMaps:
    """A supervised input's maps for one seed: each classifier row's from a fit without its fold (with
    ``full``'s config and seed), the test images' from ``full`` (fit on every row). ``normal`` ends with
    the held-out good images (``good_training_images``): what comes before them (the detectors' fit
    images, with ``--supervised-good all``) trains every fold."""
    n_hold = prep.n_hold
    shot_rows = n_hold + np.asarray(sp.train_defects, np.int64)
    defects = np.concatenate([prep.score_set.load(shot_rows.tolist()), generated])
    n_shots = len(shot_rows)
    y = np.r_[np.zeros(n_hold), np.ones(len(defects))].astype(int)
    groups = np.r_[np.arange(n_hold), n_hold + np.arange(n_shots), prep.gen_sources[: len(generated)]]
    # Shots are dealt round-robin (a generated defect goes with its source image): with k <= shots every
    # fold holds one, so every fit learns from at least one shot outside its fold.
    k = min(folds, n_hold, n_shots)
    if k < 2:
        raise InputError(
            f"--detectors {full.name}: its maps are cross-fitted over the classifier's rows, which needs at least 2 "
            f"held-out good images and 2 shots (got {n_hold} and {n_shots}); raise --shots or --holdout"
        )
    if k < folds:
        log(f"{full.name}: seed {sp.seed}: {k} folds, not --stack-folds {folds}: one per shot or held-out good image")
    fold = fold_ids(y, groups, k, seed=sp.seed)
    held_out = normal[len(normal) - n_hold :]
    t0 = time.perf_counter()
    models = fold_fits(
        type(full), full.config, normal[: len(normal) - n_hold], held_out, fold[:n_hold], defects, fold[n_hold:], k,
        log, f"seed {sp.seed}: ",
    )  # fmt: skip
    fold_seconds = time.perf_counter() - t0
    good_maps, good_scores = own_fold(models, held_out, fold[:n_hold], [prep.score_set.name(i) for i in range(n_hold)])
    names = [prep.score_set.name(int(i)) for i in shot_rows] + [f"generated image {i}" for i in range(len(generated))]
    defect_maps, defect_scores = own_fold(models, defects, fold[n_hold:], names)
    test = n_hold + np.asarray(sp.test, np.int64)
    test_maps, test_scores = predict_set(SupervisedInput(full), prep.score_set, test.tolist())
    return SeedMaps(
        full.name,
        np.r_[np.arange(n_hold), shot_rows, test],
        np.concatenate([good_maps, defect_maps[:n_shots], test_maps]),
        np.concatenate([good_scores, defect_scores[:n_shots], test_scores]),
        defect_maps[n_shots:],
        defect_scores[n_shots:],
        k,
        fold_seconds,
    )


__all__ = [
    "MAP_SIGMA",
    "STACK_FOLDS",
    "SeedMaps",
    "SupervisedInput",
    "check_stackable",
    "cross_fit",
    "fold_fits",
    "own_fold",
    "predict_images",
    "predict_set",
]
