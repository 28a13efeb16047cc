from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from segad.data import DatasetError, Split, load_dataset, load_visa

HEADER = "object,split,label,image,mask\n"


def _visa(root: Path, rows: list[tuple[str, str, str, str, str]]) -> Path:
    (root / "split_csv").mkdir(parents=True)
    lines = [HEADER] + [",".join(r) + "\n" for r in rows]
    (root / "split_csv" / "1cls.csv").write_text("".join(lines))
    for r in rows:
        for rel in r[3:]:
            if rel:
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(root / rel), np.full((16, 16), 128, np.uint8))
    return root


ROWS = [
    ("candle", "train", "normal", "candle/Data/Images/Normal/0000.JPG", ""),
    ("candle", "train", "normal", "candle/Data/Images/Normal/0001.JPG", ""),
    ("candle", "test", "normal", "candle/Data/Images/Normal/0002.JPG", ""),
    ("candle", "test", "anomaly", "candle/Data/Images/Anomaly/000.JPG", "candle/Data/Masks/Anomaly/000.png"),
    ("pcb1", "train", "normal", "pcb1/Data/Images/Normal/0000.JPG", ""),
]


def test_reads_the_split_csv(tmp_path: Path) -> None:
    ds = load_dataset(_visa(tmp_path, ROWS), "candle")
    assert ds.name == "visa" and len(ds) == 4 and ds.has_masks
    assert [s.split for s in ds] == [Split.TRAIN, Split.TRAIN, Split.TEST, Split.TEST]
    bad = [s for s in ds if s.label == 1]
    assert len(bad) == 1 and bad[0].mask_path.name == "000.png" and bad[0].defect_type == "bad"


def test_unknown_category_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="categories: candle, pcb1"):
        load_visa(_visa(tmp_path, ROWS), "capsules")


def test_missing_file_and_missing_column_are_errors(tmp_path: Path) -> None:
    root = _visa(tmp_path / "a", ROWS)
    (root / ROWS[3][4]).unlink()
    with pytest.raises(DatasetError, match=r"missing \(1\)[\s\S]*Masks/Anomaly/000\.png"):
        load_visa(root, "candle")
    root = tmp_path / "b"
    (root / "split_csv").mkdir(parents=True)
    (root / "split_csv" / "1cls.csv").write_text("object,split,image\ncandle,train,x.png\n")
    with pytest.raises(DatasetError, match="lacks the columns"):
        load_visa(root, "candle")


def test_category_is_required_for_a_visa_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="--category is needed"):
        load_dataset(_visa(tmp_path, ROWS))
