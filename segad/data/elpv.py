"""ELPV: electroluminescence images of solar cells, from the ``elpv-dataset`` wheel.

2,624 grey 300x300 cells, image-level labels only: a defect probability in {0, 1/3, 2/3, 1}
and a type, ``mono`` or ``poly``. Probability 0 is good and 1 is defect; the uncertain 1/3 and 2/3
are left out unless ``include_uncertain`` counts them as defects.

There is no official train/test split, so ours is fixed: the good cells of a category are
shuffled with ``numpy.random.default_rng(ELPV_SPLIT_SEED)`` and ``ELPV_TEST_GOOD_FRACTION`` of
them go to test; every defect cell is a test image. Licence: CC BY-NC-SA 4.0 (Buerhop-Lutz et
al., Deitsch et al.), non-commercial use only.

Category ``dra`` is instead the split of the few-shot supervised papers (DevNet, DRA CVPR 2022,
AHL CVPR 2024), made by DRA's script ``data/convert_elpv.py`` (github.com/Choubo/DRA): the good
(p = 0) cells of both types, pooled in the row order of ``labels.csv``, go through scikit-learn's
``train_test_split(..., test_size=0.25, random_state=42)``; every p = 1 cell of either type is a
test defect, its ``defect_type`` the cell type (DRA's ``test/mono`` and ``test/poly`` folders);
the uncertain 1/3 and 2/3 cells are left out. ``train_test_split`` is a permutation by
``numpy.random.RandomState(42)`` with the first ``ceil(0.25 n)`` indices for test: that is done
here directly, so the split needs no particular scikit-learn version (the tests check the two agree).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from segad.data.samples import GOOD, Dataset, DatasetError, Sample, Split

ELPV_CATEGORIES = ("mono", "poly", "dra")  # the default first
ELPV_CELL_TYPES = ("mono", "poly")
ELPV_SPLIT_SEED = 0
ELPV_TEST_GOOD_FRACTION = 0.3
DRA_RANDOM_STATE = 42
DRA_TEST_SIZE = 0.25


def elpv_labels_file() -> Path:
    try:
        import elpv_dataset
    except ImportError as e:  # pragma: no cover - it is a hard dependency
        raise DatasetError("the ELPV data comes from the 'elpv-dataset' package: pip install elpv-dataset") from e
    return Path(elpv_dataset.__file__).parent / "data" / "labels.csv"


def dra_split(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices of ``train_test_split(range(n), test_size=0.25, random_state=42)``, in its order."""
    order = np.random.RandomState(DRA_RANDOM_STATE).permutation(n)
    n_test = math.ceil(DRA_TEST_SIZE * n)
    return order[n_test:], order[:n_test]


def _label_rows() -> list[tuple[Path, float, str]]:
    """``labels.csv`` as (image path, defect probability, cell type) rows, in the file's order."""
    labels = elpv_labels_file()
    rows = []
    for n, line in enumerate(labels.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 3 or fields[2] not in ELPV_CELL_TYPES:
            raise DatasetError(f"{labels}:{n}: expected 'PATH PROBABILITY mono|poly', got {line!r}")
        rel, prob_text, kind = fields
        try:
            prob = float(prob_text)
        except ValueError:
            raise DatasetError(f"{labels}:{n}: defect probability {prob_text!r} is not a number") from None
        rows.append((labels.parent / rel, prob, kind))
    return rows


def load_elpv(category: str = "mono", include_uncertain: bool = False) -> Dataset:
    if category not in ELPV_CATEGORIES:
        raise DatasetError(f"ELPV category must be one of {', '.join(ELPV_CATEGORIES)}; got {category!r}")
    if category == "dra":
        if include_uncertain:
            raise DatasetError("the DRA split of ELPV leaves the uncertain (1/3, 2/3) cells out: use mono or poly")
        return _load_dra()
    good: list[Path] = []
    bad: list[tuple[Path, str]] = []
    for path, prob, kind in _label_rows():
        if kind != category:
            continue
        if prob == 0.0:
            good.append(path)
        elif prob == 1.0:
            bad.append((path, "defect"))
        elif include_uncertain:
            bad.append((path, f"p{round(prob * 3)}of3"))
    order = np.random.default_rng(ELPV_SPLIT_SEED).permutation(len(good))
    n_test = round(ELPV_TEST_GOOD_FRACTION * len(good))
    test_idx = set(order[:n_test].tolist())
    samples = [Sample(p, 0, GOOD, Split.TEST if i in test_idx else Split.TRAIN) for i, p in enumerate(good)]
    samples += [Sample(p, 1, t, Split.TEST) for p, t in bad]
    notes = ("ELPV has image-level labels only: pixel metrics are skipped",)
    return Dataset(name="elpv", category=category, samples=tuple(samples), has_masks=False, notes=notes)


def _load_dra() -> Dataset:
    rows = _label_rows()
    good = [path for path, prob, _ in rows if prob == 0.0]
    bad = [(path, kind) for path, prob, kind in rows if prob == 1.0]
    if len(good) < 2 or not bad:
        raise DatasetError(
            f"{elpv_labels_file()}: {len(good)} good and {len(bad)} defect cells, too few for the DRA split"
        )
    _, test_idx = dra_split(len(good))
    test = set(test_idx.tolist())
    samples = [Sample(p, 0, GOOD, Split.TEST if i in test else Split.TRAIN) for i, p in enumerate(good)]
    samples += [Sample(p, 1, kind, Split.TEST) for p, kind in bad]
    notes = (
        "ELPV has image-level labels only: pixel metrics are skipped",
        "DRA split (DevNet, DRA, AHL): good cells of both types 75/25 by train_test_split(random_state=42)",
    )
    return Dataset(name="elpv", category="dra", samples=tuple(samples), has_masks=False, notes=notes)
