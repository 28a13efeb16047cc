"""One entry point for ``--data PATH|BUILTIN --category NAME``."""

from __future__ import annotations

from pathlib import Path

from segad.data.complex import COMPLEX_CATEGORY, load_complex
from segad.data.elpv import ELPV_CATEGORIES, load_elpv
from segad.data.mvtec import categories, load_mvtec
from segad.data.samples import Dataset, DatasetError
from segad.data.synthetic import SYNTHETIC_CATEGORY, load_synthetic
from segad.data.textures import TEXTURE_CATEGORIES, load_textures
from segad.data.visa import is_visa_root, load_visa, visa_categories

# Each built-in set's categories, its default (used when --category is left out) first.
SYNTHETIC_CATEGORIES = (SYNTHETIC_CATEGORY, COMPLEX_CATEGORY)
BUILTIN_DATASETS = {"elpv": ELPV_CATEGORIES, "synthetic": SYNTHETIC_CATEGORIES, "textures": TEXTURE_CATEGORIES}


def load_dataset(data: str | Path, category: str | None = None, *, include_uncertain: bool = False) -> Dataset:
    """A built-in name (``elpv``, ``synthetic``, ``textures``) or a folder in the MVTec or VisA layout."""
    if (builtin := BUILTIN_DATASETS.get(str(data))) is not None:
        if category not in (None, *builtin):
            raise DatasetError(f"the {data} dataset has the categories {', '.join(builtin)}; got {category!r}")
        category = category or builtin[0]
        if str(data) == "elpv":
            return load_elpv(category, include_uncertain=include_uncertain)
        if str(data) == "textures":
            return load_textures(category)
        return load_complex() if category == COMPLEX_CATEGORY else load_synthetic()
    root = Path(data).expanduser()
    if not root.is_dir():
        raise DatasetError(f"--data {data}: not a folder and not a built-in dataset ({', '.join(BUILTIN_DATASETS)})")
    if is_visa_root(root):
        if category is None:
            raise DatasetError(
                f"--category is needed for the VisA root {root}: one of {', '.join(visa_categories(root))}"
            )
        return load_visa(root, category)
    if category is None:
        found = categories(root)
        if len(found) != 1:
            raise DatasetError(f"--category is needed for {root}: one of {', '.join(found) or '(none found)'}")
        category = found[0]
    return load_mvtec(root, category, name=root.name)  # the folder names the set in tables and MLflow
