"""Images -> segments (product components): which segmenter a run uses, its fit, and the segment maps
of the scored images and the generated defects.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from features import FolderSegments, KMeansSegments, SegmentSpec
from segad.data import Dataset, DatasetError, Sample
from segad.maps import ImageSet

if TYPE_CHECKING:
    from segad.config import TrainConfig
    from segad.prepare import Prepared

KMEANS_FIT_IMAGES = 64


def resolve_segments(cfg: TrainConfig, ds: Dataset) -> SegmentSpec:
    if cfg.segments == "auto":
        return SegmentSpec("folder") if ds.has_segments else SegmentSpec("kmeans", 8)
    return SegmentSpec.parse(cfg.segments)


def segment_paths(spec: SegmentSpec, ds: Dataset, samples: Sequence[Sample]) -> list[Path | None] | None:
    """Each sample's segment map for ``folder`` segments, checked before any long work starts."""
    if spec.method != "folder":
        return None
    if spec.path is None:
        paths = [s.segment_path for s in samples]
        missing = [str(s.image_path) for s, p in zip(samples, paths, strict=True) if p is None]
        if missing:
            raise DatasetError(
                f"--segments folder: {ds.name}/{ds.category} has no segment map for {len(missing)} images, "
                f"e.g. {missing[0]}; give --segments folder:PATH, kmeans:K or whole"
            )
        return paths
    root = Path(spec.path)
    out, missing = [], []
    for s in samples:
        nested = root / str(s.split) / s.defect_type / f"{s.stem}.png"
        flat = root / f"{s.stem}.png"
        p = nested if nested.is_file() else flat if flat.is_file() else None
        if p is None:
            missing.append(str(nested))
        out.append(p)
    if missing:
        shown = "\n  ".join(missing[:10])
        raise DatasetError(f"--segments {spec}: {len(missing)} segment maps are missing, e.g.\n  {shown}")
    return out


def fit_segmenter(segmenter, prep: Prepared):
    if isinstance(segmenter, KMeansSegments):
        n = min(len(prep.fit_set), KMEANS_FIT_IMAGES)
        idx = np.random.default_rng(0).choice(len(prep.fit_set), n, replace=False)
        return segmenter.fit(prep.fit_set.load(sorted(idx.tolist())))
    if isinstance(segmenter, FolderSegments):
        return segmenter.fit([p for p in prep.seg_paths if p is not None])
    return segmenter.fit()


def segment_images(segmenter, images: ImageSet, paths, chunk: int = 64) -> np.ndarray:
    out = []
    for s in range(0, len(images), chunk):
        idx = list(range(s, min(s + chunk, len(images))))
        out.append(segmenter.predict(images.load(idx), None if paths is None else [paths[i] for i in idx]))
    return np.concatenate(out)


def segment(prep: Prepared, segmenter) -> tuple[np.ndarray, np.ndarray | None]:
    """Segment maps of the scored images and of the generated defects (None when there are none)."""
    gen = segment_images(segmenter, prep.gen_set, prep.gen_seg_paths) if len(prep.gen_set) else None
    return segment_images(segmenter, prep.score_set, prep.seg_paths), gen
