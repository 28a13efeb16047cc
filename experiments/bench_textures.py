"""How hard is the built-in textures set? PaDiM and PatchCore image AUROC per category and defect type.

Fits each detector on a category's train/good images and scores its test set; the per-type column is
the AUROC of that type's images against the good ones. Used to choose ``DEFAULT_STRENGTH`` in
``segad/data/textures.py`` (aim: PaDiM between about 0.8 and 0.98 on each category).

    python experiments/bench_textures.py                       # default spec, all categories
    python experiments/bench_textures.py --category grass --strength 5 --seed 1
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from detectors import make_detector
from segad.data import load_images
from segad.data.textures import TEXTURE_CATEGORIES, TextureSpec, load_textures
from segad.metrics import image_auroc

DETECTORS = {"padim": {}, "patchcore": {}}  # the defaults (PatchCore: 1% coreset)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--category", action="append", choices=TEXTURE_CATEGORIES, help="repeatable; default: all")
    parser.add_argument("--strength", type=float, default=None, help="default: the category's own")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=128)
    args = parser.parse_args(argv)
    spec = TextureSpec(strength=args.strength, seed=args.seed)
    for category in args.category or TEXTURE_CATEGORIES:
        ds = load_textures(category, spec)
        good = load_images([s.image_path for s in ds.train_good], args.image_size)
        test = load_images([s.image_path for s in ds.test], args.image_size)
        labels = np.array([s.label for s in ds.test])
        types = np.array([s.defect_type for s in ds.test])
        for name, options in DETECTORS.items():
            start = time.perf_counter()
            scores = make_detector(name, progress=False, **options).fit(good).predict(test).scores
            per_type = " ".join(
                f"{t}={image_auroc(labels[(types == t) | (labels == 0)], scores[(types == t) | (labels == 0)]):.2f}"
                for t in ds.defect_types()
            )
            print(
                f"{category:7s} strength {spec.strength_for(category):g}  {name:9s} "
                f"AUROC {image_auroc(labels, scores):.3f}  {per_type}  ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
