"""The image set a run used, as an MLflow dataset input: the runs table's Dataset column and the lineage.

Nothing is uploaded: MLflow gets where the images lie, a digest of the file list (paths, sizes, splits,
labels; two runs with the same digest saw the same files) and the counts per split and defect type.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections import Counter
from typing import Any

from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset

from segad.data.samples import Dataset


def image_counts(ds: Dataset) -> dict[str, int]:
    """``{"train/good": 900, "test/good": 100, "test/crack": 40, ...}``, sorted by key."""
    counts = Counter(f"{s.split.value}/{s.defect_type}" for s in ds.samples)
    return dict(sorted(counts.items()))


def file_digest(ds: Dataset, root: str) -> str:
    """A short hash of every sample's path under ``root``, file size, split and label."""
    h = hashlib.sha256()
    for s in sorted(ds.samples, key=lambda s: str(s.image_path)):
        size = s.image_path.stat().st_size if s.image_path.exists() else -1
        rel = os.path.relpath(s.image_path, root)
        h.update(f"{rel}\t{size}\t{s.split.value}\t{s.defect_type}\n".encode())
    return h.hexdigest()[:16]


class ImageSet(MetaDataset):
    """A dataset of image files, logged by reference, with its counts as MLflow's dataset profile."""

    def __init__(self, ds: Dataset) -> None:
        root = os.path.commonpath([str(s.image_path.parent) for s in ds.samples])
        self.counts = image_counts(ds)
        with warnings.catch_warnings():  # MLflow registers the local source under two schemes and says so
            warnings.simplefilter("ignore")
            source = resolve_dataset_source(root)
        super().__init__(source, name=f"{ds.name}/{ds.category}", digest=file_digest(ds, root))

    @property
    def profile(self) -> dict[str, Any]:
        return {"images": sum(self.counts.values()), **self.counts}

    def to_dict(self) -> dict[str, str]:
        return {**super().to_dict(), "profile": json.dumps(self.profile)}


__all__ = ["ImageSet", "file_digest", "image_counts"]
