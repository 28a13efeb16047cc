"""VisA in its original form, read through ``split_csv/1cls.csv``.

The CSV has columns ``object, split, label, image, mask``; paths are relative to the VisA root,
labels are ``normal`` or ``anomaly``. VisA converted to the MVTec layout is read by ``load_mvtec``.
"""

from __future__ import annotations

import csv
from pathlib import Path

from segad.data.samples import GOOD, Dataset, DatasetError, Sample, Split

VISA_CSV = Path("split_csv") / "1cls.csv"
REQUIRED = ("object", "split", "label", "image", "mask")


def is_visa_root(root: str | Path) -> bool:
    return (Path(root) / VISA_CSV).is_file()


def _rows(root: Path) -> list[dict[str, str]]:
    path = root / VISA_CSV
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetError(f"{path} lacks the columns {missing}; VisA's 1cls.csv has {list(REQUIRED)}")
        return list(reader)


def visa_categories(root: str | Path) -> list[str]:
    return sorted({r["object"] for r in _rows(Path(root))})


def load_visa(root: str | Path, category: str) -> Dataset:
    root = Path(root)
    rows = [r for r in _rows(root) if r["object"] == category]
    if not rows:
        raise DatasetError(
            f"{root / VISA_CSV} has no rows for category {category!r}; categories: {', '.join(visa_categories(root))}"
        )
    samples: list[Sample] = []
    missing: list[str] = []
    for r in rows:
        split = r["split"].strip().lower()
        if split not in ("train", "test"):
            raise DatasetError(f"{root / VISA_CSV}, row for {r['image']}: split must be train or test, got {split!r}")
        label = {"normal": 0, "anomaly": 1}.get(r["label"].strip().lower())
        if label is None:
            raise DatasetError(f"{root / VISA_CSV}, row for {r['image']}: label must be normal or anomaly")
        image = root / r["image"].strip()
        mask = root / r["mask"].strip() if label == 1 and r["mask"].strip() else None
        for p in (image, mask):
            if p is not None and not p.is_file():
                missing.append(str(p))
        if split == "train" and label == 1:
            raise DatasetError(f"{image}: VisA train rows must be normal; this one is labelled anomaly")
        samples.append(Sample(image, label, GOOD if label == 0 else "bad", Split(split), mask))
    if missing:
        shown = "\n  ".join(missing[:10])
        raise DatasetError(f"files named in {root / VISA_CSV} are missing ({len(missing)}):\n  {shown}")
    has_masks = all(s.mask_path is not None for s in samples if s.label == 1)
    if not has_masks and any(s.mask_path is not None for s in samples):
        lacking = [str(s.image_path) for s in samples if s.label == 1 and s.mask_path is None][:10]
        raise DatasetError(f"some VisA anomalies of {category!r} have no mask:\n  " + "\n  ".join(lacking))
    return Dataset(name="visa", category=category, samples=tuple(samples), has_masks=has_masks)
