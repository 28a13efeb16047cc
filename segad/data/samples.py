"""The one table every loader produces: a sample per image, with its label and optional maps."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from detectors.errors import InputError


class Split(StrEnum):
    TRAIN = "train"
    TEST = "test"


GOOD = "good"


class DatasetError(InputError):
    """A dataset on disk is not in the layout its loader expects; the message says what to fix."""


@dataclass(frozen=True, slots=True)
class Sample:
    """One image. ``label`` is 0 for good, 1 for defect; ``defect_type`` is ``"good"`` for good ones."""

    image_path: Path
    label: int
    defect_type: str
    split: Split
    mask_path: Path | None = None
    segment_path: Path | None = None

    def __post_init__(self) -> None:
        if self.label not in (0, 1):
            raise DatasetError(f"{self.image_path}: label must be 0 (good) or 1 (defect), got {self.label!r}")
        if (self.label == 0) != (self.defect_type == GOOD):
            raise DatasetError(
                f"{self.image_path}: defect_type {self.defect_type!r} does not agree with label {self.label}"
            )

    @property
    def stem(self) -> str:
        return self.image_path.stem


@dataclass(frozen=True)
class Dataset:
    """An ordered, immutable table of samples for one dataset category."""

    name: str
    category: str
    samples: tuple[Sample, ...]
    has_masks: bool = False
    notes: tuple[str, ...] = field(default=())

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    def where(self, *, split: Split | str | None = None, label: int | None = None) -> tuple[Sample, ...]:
        return tuple(
            s
            for s in self.samples
            if (split is None or s.split == Split(split)) and (label is None or s.label == label)
        )

    @property
    def train_good(self) -> tuple[Sample, ...]:
        return self.where(split=Split.TRAIN, label=0)

    @property
    def test(self) -> tuple[Sample, ...]:
        return self.where(split=Split.TEST)

    @property
    def has_segments(self) -> bool:
        return bool(self.samples) and all(s.segment_path is not None for s in self.samples)

    def defect_types(self) -> list[str]:
        return sorted({s.defect_type for s in self.samples if s.label == 1})

    def to_frame(self):  # -> pandas.DataFrame; pandas comes with mlflow
        import pandas as pd

        return pd.DataFrame(
            {
                "image_path": [str(s.image_path) for s in self.samples],
                "label": [s.label for s in self.samples],
                "defect_type": [s.defect_type for s in self.samples],
                "split": [str(s.split) for s in self.samples],
                "mask_path": [None if s.mask_path is None else str(s.mask_path) for s in self.samples],
                "segment_path": [None if s.segment_path is None else str(s.segment_path) for s in self.samples],
            }
        )

    def summary(self) -> str:
        n_train = len(self.train_good)
        test = self.test
        n_bad = sum(s.label for s in test)
        return (
            f"{self.name}/{self.category}: {n_train} train good, {len(test) - n_bad} test good, "
            f"{n_bad} test defects ({', '.join(self.defect_types()) or 'none'}); "
            f"masks: {'yes' if self.has_masks else 'no'}, segment maps: {'yes' if self.has_segments else 'no'}"
        )


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name so every loader is deterministic."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def by_stem(paths: Iterable[Path], strip_suffix: str = "") -> dict[str, Path]:
    """Index files by stem (minus ``strip_suffix``); a repeated stem is an error, never a silent pick."""
    out: dict[str, Path] = {}
    for p in paths:
        stem = p.stem
        if strip_suffix and stem.endswith(strip_suffix):
            stem = stem[: -len(strip_suffix)]
        if stem in out:
            raise DatasetError(f"two files share the stem {stem!r}: {out[stem]} and {p}; keep one of them")
        out[stem] = p
    return out
