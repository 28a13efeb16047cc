"""ELPV: electroluminescence images of solar cells, from the ``elpv-dataset`` wheel.

2,624 grey 300x300 cells, image-level labels only: a defect probability in {0, 1/3, 2/3, 1}
and a type, ``mono`` or ``poly``. Probability 0 is good and 1 is defect; the uncertain 1/3 and 2/3
are left out unless ``include_uncertain`` counts them as defects.

There is no official train/test split, so ours is fixed: the good cells of a category are
shuffled with ``numpy.random.default_rng(ELPV_SPLIT_SEED)`` and ``ELPV_TEST_GOOD_FRACTION`` of
them go to test; every defect cell is a test image. Licence: CC BY-NC-SA 4.0 (Buerhop-Lutz et
al., Deitsch et al.), non-commercial use only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segad.data.samples import GOOD, Dataset, DatasetError, Sample, Split

ELPV_CATEGORIES = ("mono", "poly")
ELPV_SPLIT_SEED = 0
ELPV_TEST_GOOD_FRACTION = 0.3


def elpv_labels_file() -> Path:
    try:
        import elpv_dataset
    except ImportError as e:  # pragma: no cover - it is a hard dependency
        raise DatasetError("the ELPV data comes from the 'elpv-dataset' package: pip install elpv-dataset") from e
    return Path(elpv_dataset.__file__).parent / "data" / "labels.csv"


def load_elpv(category: str = "mono", include_uncertain: bool = False) -> Dataset:
    if category not in ELPV_CATEGORIES:
        raise DatasetError(f"ELPV category must be one of {ELPV_CATEGORIES}, got {category!r}")
    labels = elpv_labels_file()
    rows = [line.split() for line in labels.read_text().splitlines() if line.strip()]
    good: list[Path] = []
    bad: list[tuple[Path, str]] = []
    for rel, prob_text, kind in rows:
        if kind != category:
            continue
        prob = float(prob_text)
        path = labels.parent / rel
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
