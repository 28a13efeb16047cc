"""Export an anomalib model's anomaly maps in the layout ``segad.train --maps`` reads: the worked example
of stacking the detectors you already have.

The anomalib model (PatchCore or PaDiM, anomalib 2.7, on the shipped EfficientNet-Lite0 weights mapped
into timm, as in ``compare_anomalib.py``; nothing is downloaded) fits on the good training images
minus a held-out 10% (``segad.protocol.fit_split``), then maps the held-out good images and the test
images. Written: ``OUT/<split>/<type>/<stem>.npy`` (float32, the run's image size) and ``OUT/scores.csv``
(``image``, ``score``: anomalib's image score). The held-out good images' maps tell segad which good
images the model never saw: they train SegAD's classifier.

    pip install -e ".[peers]"
    python experiments/export_anomalib_maps.py --category mono --out maps/anomalib_patchcore
    python -m segad.train --category mono --detectors padim --maps anomalib_patchcore=maps/anomalib_patchcore
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from experiments.compare_anomalib import (
    CORESET_RATIO,
    _batches,
    anomalib_model,
    quiet_imports,
    require_anomalib,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="elpv")
    ap.add_argument("--category", default=None)
    ap.add_argument("--model", default="patchcore", choices=("patchcore", "padim"))
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--holdout", type=float, default=0.1, help="share of good training images held out of the fit")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    require_anomalib()
    os.environ.setdefault("TQDM_DISABLE", "1")
    quiet_imports()
    import torch

    from segad.data import load_dataset, load_images
    from segad.protocol import fit_split

    torch.manual_seed(0)
    ds = load_dataset(args.data, args.category)
    fs = fit_split(ds, args.holdout)
    scored = [*fs.holdout_good, *ds.test]
    model = anomalib_model(args.model).model
    t0 = time.perf_counter()
    with torch.no_grad():
        model.train()  # a training-mode forward stores the embeddings
        for b in _batches(torch.from_numpy(load_images([s.image_path for s in fs.fit_good], args.image_size))):
            model(b)
        model.subsample_embedding(CORESET_RATIO) if args.model == "patchcore" else model.fit()
        model.eval()
        fit_s = time.perf_counter() - t0
        rows = [("image", "score")]
        for s in range(0, len(scored), 64):
            chunk = scored[s : s + 64]
            got = model(torch.from_numpy(load_images([x.image_path for x in chunk], args.image_size)))
            for sample, m, score in zip(chunk, got.anomaly_map[:, 0].numpy(), got.pred_score.reshape(-1), strict=True):
                target = args.out / str(sample.split) / sample.defect_type / f"{sample.stem}.npy"
                target.parent.mkdir(parents=True, exist_ok=True)
                np.save(target, m.astype(np.float32))
                rows.append((f"{sample.split}/{sample.defect_type}/{sample.image_path.name}", repr(float(score))))
    with (args.out / "scores.csv").open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    total = time.perf_counter() - t0
    print(
        f"anomalib {args.model}: fit on {len(fs.fit_good)} good images in {fit_s:.1f} s; {len(scored)} maps "
        f"({len(fs.holdout_good)} held-out good, {len(ds.test)} test) written to {args.out} in {total - fit_s:.1f} s"
    )


if __name__ == "__main__":
    main()
