"""How are the one-class detectors fooled on ``synthetic/complex``? Image AUROC, where good parts peak, and
what each component's own peak would give.

Fits PatchCore and PaDiM (defaults) on the detectors' share of train/good (segad.train's split: 10%
held out) and scores the held-out good and the test images. Per detector it prints: image AUROC
overall and per defect type; the share of test good images whose map peaks on a benign component
(label, cable, table); and the AUROC of each component's 0.995 quantile alone, the signal a
per-segment classifier can find. ``max(non-benign)`` is the largest of the body, chip, pins and
connector quantiles, each standardised by the held-out good images' mean and spread: a simple,
untrained reference for what looking at the right components gives.

    python experiments/bench_complex.py                   # default spec, 256 px as segad.train
    python experiments/bench_complex.py --seed 1 --image-size 128
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from detectors import make_detector
from features.statistics import batch_statistics
from segad.data import load_images, load_segments
from segad.data.complex import BENIGN_COMPONENTS, COMPLEX_COMPONENTS, ComplexSpec, load_complex
from segad.metrics import image_auroc
from segad.protocol import fit_split


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--detectors", default="patchcore,padim")
    args = parser.parse_args(argv)
    ds = load_complex(ComplexSpec(seed=args.seed))
    fs = fit_split(ds)
    scored = list(fs.holdout_good) + list(ds.test)
    n_hold, size = len(fs.holdout_good), args.image_size
    good = load_images([s.image_path for s in fs.fit_good], size)
    images = load_images([s.image_path for s in scored], size)
    seg = np.stack([load_segments(s.segment_path, size) for s in scored])
    labels = np.array([s.label for s in ds.test])
    types = np.array([s.defect_type for s in ds.test])
    k = len(COMPLEX_COMPONENTS)
    benign = [COMPLEX_COMPONENTS.index(c) for c in BENIGN_COMPONENTS]
    other = [j for j in range(k) if j not in benign]
    for name in args.detectors.split(","):
        start = time.perf_counter()
        out = make_detector(name, progress=False).fit(good).predict(images)
        seconds = time.perf_counter() - start
        scores = out.scores[n_hold:]
        per_type = " ".join(
            f"{t}={image_auroc(labels[(types == t) | (labels == 0)], scores[(types == t) | (labels == 0)]):.2f}"
            for t in ds.defect_types()
        )
        print(f"{name}: image AUROC {image_auroc(labels, scores):.3f} ({seconds:.0f} s)  {per_type}", flush=True)
        test_maps, test_seg = out.maps[n_hold:], seg[n_hold:]
        peak = [
            int(sg.flat[int(np.argmax(m))]) for m, sg in zip(test_maps[labels == 0], test_seg[labels == 0], strict=True)
        ]
        where = np.bincount(peak, minlength=k)
        print(
            "  good test images peak on: "
            + ", ".join(f"{COMPLEX_COMPONENTS[j]} {where[j]}" for j in range(k) if where[j])
            + f"  (benign: {sum(where[j] for j in benign) / max(1, sum(where)):.0%})"
        )
        stats = batch_statistics(out.maps[:, None].astype(np.float32), seg, k)[:, 0]  # (N, K, 4)
        q = stats[:, :, 0]
        print(
            "  per-component q995 AUROC: "
            + ", ".join(f"{COMPLEX_COMPONENTS[j]} {image_auroc(labels, q[n_hold:, j]):.2f}" for j in range(k))
        )
        z = (q[:, other] - q[:n_hold, other].mean(0)) / (q[:n_hold, other].std(0) + 1e-9)
        print(f"  max(non-benign) standardised q995 AUROC: {image_auroc(labels, z[n_hold:].max(1)):.3f}")


if __name__ == "__main__":
    main()
