"""Anomaly maps + segments -> feature rows: the cached detectors' once, a stacked input's per seed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from features.vector import feature_matrix, join_features
from segad.crossfit import SeedMaps
from segad.prepare import Prepared
from segad.segmenting import segment_images, segment_paths


def pooled(
    inputs: Mapping[str, tuple[np.ndarray, np.ndarray]], segments: np.ndarray, k: int, with_scores: bool
) -> np.ndarray:
    """Feature rows from each input's ``(maps, scores)`` on the same images, in ``inputs``' order."""
    maps, scores = {n: m for n, (m, _) in inputs.items()}, {n: s for n, (_, s) in inputs.items()}
    return feature_matrix(maps, scores, segments, k, with_scores=with_scores)


def features(
    prep: Prepared, names: Sequence[str], seg: np.ndarray, gen_seg: np.ndarray | None, k: int, with_scores: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Feature rows of the scored images and of the generated defects, for the detectors ``names``."""
    X = pooled({n: (prep.maps[n].maps, prep.maps[n].scores) for n in names}, seg, k, with_scores)
    if gen_seg is None:
        return X, np.empty((0, X.shape[1]))
    gen = {n: (prep.gen_maps[n].maps, prep.gen_maps[n].scores) for n in names}
    return X, pooled(gen, gen_seg, k, with_scores)


def judge_features(
    prep: Prepared, segmenter, seg: np.ndarray, gen_seg: np.ndarray | None, k: int, with_scores: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Feature rows from the fold models' maps (``segad.judging``): of the fit images (each out of fold),
    of the scored images (NaN on those that never judge: ``judge.judged``) and of the generated defects
    (``seg``, ``gen_seg``: their segments)."""
    judge = prep.judge
    if judge is None:
        raise ValueError("no cross-fitted maps: prepare ran with --judge-folds 0")
    fit_seg = segment_images(segmenter, prep.fit_set, segment_paths(prep.spec, prep.ds, prep.fs.fit_good))
    good = pooled({n: (judge.good_maps[n], judge.good_scores[n]) for n in prep.maps}, fit_seg, k, with_scores)
    part = pooled(
        {n: (judge.scored_maps[n], judge.scored_scores[n]) for n in prep.maps}, seg[judge.judged], k, with_scores
    )
    scored = np.full((len(seg), part.shape[1]), np.nan)
    scored[judge.judged] = part
    if gen_seg is None:
        return good, scored, np.empty((0, good.shape[1]))
    gen = pooled({n: (judge.gen_maps[n], judge.gen_scores[n]) for n in prep.maps}, gen_seg, k, with_scores)
    return good, scored, gen


def stacked_features(
    prep: Prepared,
    stacked: Mapping[str, SeedMaps],
    seg: np.ndarray,
    gen_seg: np.ndarray | None,
    k: int,
    with_scores: bool,
    shared: tuple[np.ndarray, np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """One seed's feature rows: the cached detectors' (``shared``, every seed's) joined with its stacked
    inputs' in the pipeline's layout; NaN on the scored images this seed never reads."""
    if not stacked:
        return shared
    X, X_gen = shared
    rows = next(iter(stacked.values())).rows
    part = pooled({n: (sm.maps, sm.scores) for n, sm in stacked.items()}, seg[rows], k, with_scores)
    X_stacked = np.full((len(X), part.shape[1]), np.nan)
    X_stacked[rows] = part
    X_gen_stacked = np.empty((0, part.shape[1]))
    if gen_seg is not None:
        X_gen_stacked = pooled({n: (sm.gen_maps, sm.gen_scores) for n, sm in stacked.items()}, gen_seg, k, with_scores)
    m_shared, m_stacked = len(prep.maps), len(stacked)
    return (
        join_features([(X, m_shared), (X_stacked, m_stacked)], with_scores),
        join_features([(X_gen, m_shared), (X_gen_stacked, m_stacked)], with_scores),
    )
