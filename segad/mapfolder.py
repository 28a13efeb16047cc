"""Anomaly maps another tool computed, read from a folder: a detector segad stacks but did not fit.

Two layouts are read:

- ``mirror``: the dataset's own layout, ``DIR/<split>/<type>/<stem>.npy|.tiff|.tif|.png``, with an
  optional ``DIR/scores.csv`` (columns ``image``, the image's path under the dataset root, and
  ``score``); without it an image's score is its map's maximum, as SegAD's official code takes it.
- ``segad``: what the official SegAD code (abc-125/segad) reads: ``df_training.csv`` and ``df_test.csv``
  (columns ``filepath``, ``an_map_path``, ``label``, ``prediction_an_det``) in ``DIR`` or
  ``DIR/<category>``, the maps wherever ``an_map_path`` points (as written, or under the CSV's folder
  in ``anomaly_maps/<type>/<stem>.npy``).

Maps of any size are resized to the run's image size (area when shrinking, bilinear when growing). The
good training images that have maps are the ones the other tool's detector was not fit on: they are
SegAD's held-out good images, and segad's own detectors fit on the rest.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

import cv2
import numpy as np

from detectors.base import DetectorOutput
from detectors.errors import InputError
from segad.data.images import resize
from segad.data.samples import Sample

MAP_SUFFIXES = (".npy", ".tiff", ".tif", ".png")
SCORES_FILE = "scores.csv"
SEGAD_CSVS = ("df_training.csv", "df_test.csv")
Layout = Literal["mirror", "segad"]
ScoreSource = Literal["map_max", "given"]
MapInput = str | Path | np.ndarray  # a map file, or the map itself


class MapFolderError(InputError):
    """Maps that cannot be stacked: missing, unreadable, NaN, or not one 2-D map per image."""


def sample_key(sample: Sample) -> str:
    """How a dataset image is known in a maps folder: ``<split>/<type>/<stem>``."""
    return f"{sample.split}/{sample.defect_type}/{sample.stem}"


def path_key(path: str | Path) -> str:
    """A path under a root, as a key: POSIX separators, no suffix (``test/crack/001.png`` -> ``test/crack/001``)."""
    p = PurePosixPath(Path(path).as_posix())
    return str(p.with_suffix("")) if p.suffix else str(p)


def read_map(path: str | Path) -> np.ndarray:
    """One map file -> (H, W) float32; a singleton channel axis is dropped. Errors say what is wrong."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".npy":
            arr = np.load(path, allow_pickle=False)
        else:
            arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED | cv2.IMREAD_ANYDEPTH)
            if arr is None:
                raise ValueError("not a readable image")
    except (OSError, ValueError) as e:
        raise MapFolderError(f"{path}: cannot read it ({e})") from None
    return check_map(arr, str(path))


def check_map(arr: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype.kind not in "biuf":
        raise MapFolderError(f"{what}: a map must hold numbers, got dtype {arr.dtype}")
    arr = arr.squeeze(axis=tuple(i for i in range(arr.ndim) if arr.shape[i] == 1 and arr.ndim > 2))
    if arr.ndim != 2:
        raise MapFolderError(f"{what}: a map must be one 2-D array per image, got shape {arr.shape}")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise MapFolderError(f"{what}: the map has NaN or infinite values")
    return arr


def _index(root: Path) -> dict[str, Path]:
    """Every map file under ``root`` by its key; one key with two files (a.npy and a.png) is an error."""
    out: dict[str, Path] = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix.lower() in MAP_SUFFIXES:
            key = path_key(p.relative_to(root))
            if key in out:
                raise MapFolderError(f"{root}: two maps for {key}: {out[key].name} and {p.name}; keep one")
            out[key] = p
    return out


def _read_csv(path: Path, needed: Sequence[str]) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    columns = set(rows[0]) if rows else set()
    if missing := [c for c in needed if c not in columns]:
        raise MapFolderError(f"{path}: no column {', '.join(missing)}; it has {', '.join(sorted(columns)) or 'none'}")
    return rows


def _score(value: str, where: str) -> float:
    try:
        score = float(value)
    except ValueError:
        raise MapFolderError(f"{where}: score {value!r} is not a number") from None
    if not np.isfinite(score):
        raise MapFolderError(f"{where}: score {value!r} is not finite")
    return score


@dataclass(frozen=True)
class MapFolder:
    """The maps (and maybe scores) of one detector, by image key."""

    name: str
    root: Path
    layout: Layout
    files: dict[str, Path]
    scores: dict[str, float]  # empty: each image's score is its map's maximum

    @property
    def score_source(self) -> ScoreSource:
        return "given" if self.scores else "map_max"

    @classmethod
    def open(cls, name: str, root: str | Path, category: str | None = None) -> MapFolder:
        """Read the folder's index (not its maps): the SegAD layout when its CSVs are there, else mirror."""
        root = Path(root)
        if not root.is_dir():
            raise MapFolderError(f"--maps {name}={root}: no such folder")
        for base in (root, root / category) if category else (root,):
            if all((base / c).is_file() for c in SEGAD_CSVS):
                return cls._segad(name, base)
        files = _index(root)
        if not files:
            raise MapFolderError(
                f"--maps {name}={root}: no map files ({', '.join(MAP_SUFFIXES)}) and no SegAD CSVs "
                f"({' and '.join(SEGAD_CSVS)}); lay maps out as DIR/<split>/<type>/<stem>.npy"
            )
        scores: dict[str, float] = {}
        if (csv_path := root / SCORES_FILE).is_file():
            for i, row in enumerate(_read_csv(csv_path, ("image", "score")), start=2):
                scores[path_key(row["image"])] = _score(row["score"], f"{csv_path} line {i}")
        return cls(name, root, "mirror", files, scores)

    @classmethod
    def _segad(cls, name: str, base: Path) -> MapFolder:
        files: dict[str, Path] = {}
        scores: dict[str, float] = {}
        for csv_name in SEGAD_CSVS:
            csv_path = base / csv_name
            for i, row in enumerate(_read_csv(csv_path, ("filepath", "an_map_path", "prediction_an_det")), start=2):
                image = PurePosixPath(Path(row["filepath"]).as_posix())
                if len(image.parts) < 3:
                    raise MapFolderError(
                        f"{csv_path} line {i}: filepath {row['filepath']!r} is not .../<split>/<type>/<file>"
                    )
                key = f"{image.parts[-3]}/{image.parts[-2]}/{image.stem}"
                given = Path(row["an_map_path"])
                candidates = [given, base / given, base / "anomaly_maps" / image.parts[-2] / f"{image.stem}.npy"]
                files[key] = next((c for c in candidates if c.is_file()), given)
                scores[key] = _score(row["prediction_an_det"], f"{csv_path} line {i}")
        return cls(name, base, "segad", files, scores)

    def covers(self, samples: Iterable[Sample]) -> list[Sample]:
        """The samples this folder has a map for."""
        return [s for s in samples if sample_key(s) in self.files]

    def load(self, samples: Sequence[Sample], size: tuple[int, int]) -> DetectorOutput:
        """Every sample's map (resized) and score; all problems are gathered into one error."""
        problems: list[str] = []
        maps = np.zeros((len(samples), *size), np.float32)
        scores = np.zeros(len(samples), np.float32)
        for i, s in enumerate(samples):
            key = sample_key(s)
            file = self.files.get(key)
            if file is None or not file.is_file():
                problems.append(f"{s.image_path}: no map ({file if file else f'{key}.npy under {self.root}'})")
                continue
            if self.scores and key not in self.scores:
                problems.append(f"{s.image_path}: no score in {self.root / SCORES_FILE}")
                continue
            try:
                raw = read_map(file)
            except MapFolderError as e:
                problems.append(str(e))
                continue
            maps[i] = resize(raw, size)
            scores[i] = self.scores[key] if self.scores else raw.max()
        if problems:
            shown = "\n  ".join(problems[:20])
            more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
            raise MapFolderError(
                f"--maps {self.name}={self.root}: {len(problems)} of {len(samples)} images cannot be stacked:\n"
                f"  {shown}{more}"
            )
        return DetectorOutput(maps, scores)


@dataclass
class GivenMaps:
    """A pipeline input whose maps come with each image, computed elsewhere: the saved model records
    that it needs them, and scoring without them fails."""

    name: str
    image_size: tuple[int, int]
    score_source: ScoreSource = "map_max"
    trained_from: str = ""  # the folder the training maps came from, for the record

    def predict(self, images: Sequence[MapInput], scores: Sequence[float] | None = None) -> DetectorOutput:
        """The maps of a batch, from their files or arrays, resized as training resized them."""
        if self.score_source == "given" and scores is None:
            raise InputError(
                f"{self.name}: this model was trained on the image scores given with its maps; give them too "
                f"(segad.predict: {SCORES_FILE} in the --maps folder; pyfunc: a {self.name}_score column)"
            )
        maps = [
            read_map(m) if isinstance(m, str | Path) else check_map(m, f"{self.name} map {i}")
            for i, m in enumerate(images)
        ]
        out = np.stack([resize(m, self.image_size) for m in maps]) if maps else np.zeros((0, *self.image_size))
        raw_max = np.array([m.max() for m in maps], np.float32)
        return DetectorOutput(out.astype(np.float32), raw_max if scores is None else np.asarray(scores, np.float32))

    def identity(self) -> dict[str, str]:
        """What the run's record says of this input (its MLflow params)."""
        return {"source": "maps", "folder": self.trained_from, "score_source": self.score_source}


def parse_maps(text: str) -> dict[str, Path]:
    """``"a=DIR,b=DIR2"`` (or repeated ``--maps``) -> ``{name: folder}``, with errors naming the option."""
    out: dict[str, Path] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, sep, folder = item.partition("=")
        name = name.strip()
        if not sep or not name or not folder.strip():
            raise InputError(f"--maps {item!r}: use NAME=DIR, e.g. --maps anomalib_patchcore=exported_maps/")
        if name in out:
            raise InputError(f"--maps: {name} is given twice")
        out[name] = Path(folder.strip())
    return out


def match_files(folder: Path, images: Sequence[Path], root: Path) -> tuple[list[Path], list[float] | None]:
    """Each image's map in ``folder`` (by its path under ``root``, else by its file name alone) and, when
    ``folder`` has a ``scores.csv``, its score; every image without one is listed in one error."""
    index = _index(folder) if folder.is_dir() else {}
    by_stem: dict[str, list[Path]] = {}
    for key, p in index.items():
        by_stem.setdefault(PurePosixPath(key).name, []).append(p)
    given: dict[str, float] = {}
    if (csv_path := folder / SCORES_FILE).is_file():
        for i, row in enumerate(_read_csv(csv_path, ("image", "score")), start=2):
            given[path_key(row["image"])] = _score(row["score"], f"{csv_path} line {i}")
    files, scores, missing = [], [], []
    for image in images:
        key = path_key(image.relative_to(root)) if image.is_relative_to(root) else image.stem
        hit = index.get(key) or (by_stem.get(image.stem, [None])[0] if len(by_stem.get(image.stem, [])) == 1 else None)
        score = given.get(key, given.get(image.stem))
        if hit is None or (given and score is None):
            missing.append(str(image))
            continue
        files.append(hit)
        scores.append(score)
    if missing:
        shown = "\n  ".join(missing[:20])
        raise MapFolderError(
            f"--maps {folder}: no map{' or score' if given else ''} for {len(missing)} images:\n  {shown}"
        )
    return files, (scores if given else None)


__all__ = [
    "MAP_SUFFIXES",
    "GivenMaps",
    "MapFolder",
    "MapFolderError",
    "match_files",
    "parse_maps",
    "path_key",
    "read_map",
    "sample_key",
]
