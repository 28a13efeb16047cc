"""MVTec AD layout loader (also reads VisA converted to that layout).

    <root>/<category>/train/good/*.png
    <root>/<category>/test/good/*.png
    <root>/<category>/test/<defect>/*.png
    <root>/<category>/ground_truth/<defect>/<stem>_mask.png   (or <stem>.png; optional)
    <root>/<category>/segments/<split>/<type>/<stem>.png      (optional component label maps)

Masks are matched by file stem, never by sorted position: MVTec's own files line up by
position, but user folders with a gap would silently pair the wrong mask.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from segad.data.samples import GOOD, Dataset, DatasetError, Sample, Split, by_stem, list_images


def _listing(paths: list[Path], limit: int = 10) -> str:
    shown = "\n  ".join(str(p) for p in paths[:limit])
    more = f"\n  ... and {len(paths) - limit} more" if len(paths) > limit else ""
    return f"\n  {shown}{more}"


def categories(root: str | Path) -> list[str]:
    """Categories under an MVTec-style root: folders that hold ``train/good``."""
    root = Path(root)
    return sorted(p.name for p in root.iterdir() if (p / "train" / GOOD).is_dir()) if root.is_dir() else []


def _segment_index(cat_dir: Path) -> dict[tuple[str, str, str], Path] | None:
    seg_root = cat_dir / "segments"
    if not seg_root.is_dir():
        return None
    index: dict[tuple[str, str, str], Path] = {}
    for split_dir in sorted(p for p in seg_root.iterdir() if p.is_dir()):
        for type_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            for stem, path in by_stem(list_images(type_dir)).items():
                index[(split_dir.name, type_dir.name, stem)] = path
    return index


def load_mvtec(root: str | Path, category: str, name: str = "mvtec") -> Dataset:
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} does not exist; pass --data with the folder that holds the categories")
    cat_dir = root / category
    if not (cat_dir / "train" / GOOD).is_dir():
        found = categories(root)
        raise DatasetError(
            f"{cat_dir / 'train' / GOOD} not found; categories under {root}: {', '.join(found) or 'none'}"
        )
    test_dir = cat_dir / "test"
    if not test_dir.is_dir():
        raise DatasetError(f"{test_dir} not found: the MVTec layout needs test/good and test/<defect> folders")

    gt_dir = cat_dir / "ground_truth"
    has_masks = gt_dir.is_dir()
    segments = _segment_index(cat_dir)

    samples: list[Sample] = []
    missing_masks: list[Path] = []
    orphan_masks: list[Path] = []
    missing_segments: list[Path] = []

    def add(split: Split, defect_type: str, paths: list[Path], masks: dict[str, Path] | None) -> None:
        for p in paths:
            mask = None
            if masks is not None:
                mask = masks.pop(p.stem, None)
                if mask is None:
                    missing_masks.append(p)
            seg = None
            if segments is not None:
                seg = segments.get((str(split), defect_type, p.stem))
                if seg is None:
                    missing_segments.append(p)
            label = 0 if defect_type == GOOD else 1
            samples.append(Sample(p, label, defect_type, split, mask, seg))

    add(Split.TRAIN, GOOD, list_images(cat_dir / "train" / GOOD), None)
    type_dirs = sorted(p for p in test_dir.iterdir() if p.is_dir())
    for type_dir in type_dirs:
        defect_type = type_dir.name
        masks = None
        if has_masks and defect_type != GOOD:
            mask_files = list_images(gt_dir / defect_type) if (gt_dir / defect_type).is_dir() else []
            masks = by_stem(mask_files, strip_suffix="_mask")
        add(Split.TEST, defect_type, list_images(type_dir), masks)
        if masks:
            orphan_masks.extend(masks.values())

    if has_masks:
        known = {p.name for p in type_dirs}
        orphan_masks.extend(p for p in sorted(gt_dir.iterdir()) if p.is_dir() and p.name not in known)
    if missing_masks:
        raise DatasetError(
            f"{cat_dir} has a ground_truth folder, but these defect images have no mask "
            f"(expected ground_truth/<defect>/<stem>_mask.png):{_listing(missing_masks)}\n"
            "Add the masks, or remove ground_truth/ to use image-level labels only."
        )
    if orphan_masks:
        raise DatasetError(f"these masks under {gt_dir} match no test image (by file stem):{_listing(orphan_masks)}")
    if missing_segments:
        raise DatasetError(
            f"{cat_dir / 'segments'} exists but has no segment map for:{_listing(missing_segments)}\n"
            "Expected segments/<split>/<type>/<stem>.png for every image."
        )
    if not samples or not any(s.split == Split.TRAIN for s in samples):
        raise DatasetError(f"{cat_dir / 'train' / GOOD} holds no images")

    notes = (
        () if has_masks else (f"{cat_dir} has no ground_truth folder: image-level labels only, pixel metrics skipped",)
    )
    return Dataset(name=name, category=category, samples=tuple(samples), has_masks=has_masks, notes=notes)


def write_samples(cat: Path, items: Iterable) -> Path:
    """Write generated items (``image`` RGB or grey uint8, ``mask``, ``split``, ``defect_type``, and
    optionally ``components``) under ``cat`` in the MVTec layout, numbered per split and type."""
    import cv2

    counters: dict[tuple[str, str], int] = {}
    for item in items:
        key = (str(item.split), item.defect_type)
        stem = f"{counters.get(key, 0):03d}"
        counters[key] = counters.get(key, 0) + 1
        image = item.image if item.image.ndim == 2 else cv2.cvtColor(item.image, cv2.COLOR_RGB2BGR)
        outputs = [(cat / item.split / item.defect_type / f"{stem}.png", image)]
        if getattr(item, "components", None) is not None:
            outputs.append((cat / "segments" / item.split / item.defect_type / f"{stem}.png", item.components))
        if item.defect_type != GOOD:
            mask = item.mask.astype(np.uint8) * 255
            outputs.append((cat / "ground_truth" / item.defect_type / f"{stem}_mask.png", mask))
        for path, pixels in outputs:
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), pixels)
    return cat


def spec_key(spec) -> str:
    """A generated set's cache key: a hash of its spec dataclass, so any change to it writes a new set."""
    import hashlib
    import json
    from dataclasses import asdict

    return hashlib.sha1(json.dumps(asdict(spec), sort_keys=True).encode()).hexdigest()[:12]


def generated_set(folder: str, cache_dir: str | Path | None, write: Callable[[Path], object]) -> Path:
    """``folder`` under ``cache_dir`` (default: segad's cache, ``datasets/``), written once by ``write``."""
    from segad.paths import cache_root

    base = Path(cache_dir) if cache_dir is not None else cache_root() / "datasets"
    return write_once(base / folder, write)


def write_once(root: Path, write: Callable[[Path], object]) -> Path:
    """A generated set written into ``root`` once: into a temporary folder beside it, then one atomic
    rename, so a reader never sees half a set, an interrupted write leaves nothing behind, and of two
    concurrent writers one wins and the other uses its set."""
    if root.is_dir():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        write(tmp)
        os.replace(tmp, root)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not root.is_dir():  # a concurrent writer did not win the race either
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root
