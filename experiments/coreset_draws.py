"""Many coreset draws on one fixed PatchCore embedding: which sampler is better in expectation?

A single PatchCore fit on these textures moves by 1-3 AUROC points with the coreset's random draws, so
a half-point question between two samplers needs hundreds of fits. Embedding the images is the same for
every draw, so it is done once; each draw then only selects a coreset and scores the test set.

Samplers:
- ``ours``: ``detectors.coreset.greedy_coreset`` with ``--projection-dim`` (0: exact distances);
- ``anomalib``: anomalib 2.7.0's ``KCenterGreedy`` (sparse projection to the JL dimension), seeded
  exactly as ``compare_anomalib.py``'s pipeline seeds it (torch and numpy seeded with the fit seed, then
  the model built, which draws from torch): draw ``s`` here is fit seed ``s`` there, to the patch.

Scores are the image-level max nearest-bank distance (no re-weighting: it moves anomalib's scores by
at most 1% and ranks by nothing). Image AUROC is each draw's mean over SegAD's split seeds, as in
``compare_anomalib.py``; the summary is mean, std and standard error over draws.

    python experiments/coreset_draws.py --category grass --sampler ours --draws 200
    python experiments/coreset_draws.py --category grass --sampler anomalib --first 30 --draws 60
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="textures")
    ap.add_argument("--category", default="grass")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--sampler", choices=("ours", "anomalib"), default="ours")
    ap.add_argument("--projection-dim", type=int, default=None, help="ours: default PatchCore's")
    ap.add_argument("--first", type=int, default=0, help="first draw's seed")
    ap.add_argument("--draws", type=int, default=30)
    ap.add_argument("--ratio", type=float, default=0.01)
    args = ap.parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")
    import torch

    from detectors import PatchCoreConfig, make_detector
    from detectors.coreset import greedy_coreset
    from segad.data import load_dataset, load_images
    from segad.metrics import image_auroc
    from segad.protocol import fit_split, seed_split, seeds

    ds = load_dataset(args.data, args.category)
    good = torch.from_numpy(load_images([s.image_path for s in fit_split(ds, 0.1).fit_good], args.image_size))
    test = torch.from_numpy(load_images([s.image_path for s in ds.test], args.image_size))
    labels = np.array([s.label for s in ds.test])
    tests = [seed_split(ds, 10, s).test for s in seeds(10)]
    det = make_detector("patchcore", device="cpu", progress=False)
    with torch.no_grad():
        fit = torch.cat([det._embed(b).flatten(0, 2) for b in det._batches(good, "fit")])
        queries = [det._embed(t[None])[0].flatten(0, 1) for t in test]
    projection = PatchCoreConfig().projection_dim if args.projection_dim is None else args.projection_dim
    if args.sampler == "anomalib":
        import compare_anomalib as ca

        ca.require_anomalib()
        from anomalib.models.components.sampling import KCenterGreedy
    aurocs = []
    for seed in range(args.first, args.first + args.draws):
        if args.sampler == "ours":
            keep = greedy_coreset(fit, args.ratio, projection, seed)
        else:
            torch.manual_seed(seed)
            np.random.seed(seed)
            ca.anomalib_model("patchcore")  # draws from torch as the pipeline's model does
            keep = torch.as_tensor(KCenterGreedy(fit, args.ratio).select_coreset_idxs())
        bank = fit[keep]
        with torch.no_grad():
            scores = torch.stack([torch.cdist(q, bank).min(1).values.max() for q in queries]).numpy()
        aurocs.append(float(np.mean([image_auroc(labels[t], scores[t]) for t in tests])))
        print(f"draw {seed}: coreset {len(keep)}, image AUROC {aurocs[-1]:.4f}", flush=True)
    a = np.array(aurocs)
    what = f"ours (projection_dim={projection})" if args.sampler == "ours" else "anomalib KCenterGreedy"
    print(
        f"{args.data}/{args.category} {args.image_size} px, {what}, {len(a)} draws from seed {args.first}: "
        f"image AUROC {a.mean():.4f} ± {a.std():.4f} (standard error {a.std() / np.sqrt(len(a)):.4f})"
    )


if __name__ == "__main__":
    main()
