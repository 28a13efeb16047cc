"""Per-image inference time of a saved pipeline: base detectors vs the SegAD layer on top.

    python -m segad.train --model-dir outputs/models/elpv_mono      # once, to have a model
    python experiments/bench_inference.py --model outputs/models/elpv_mono --n 128

The SegAD layer is segments + per-segment features + classifier; the target is under 10% of the
detectors' time. ``explain`` is what ``segad.predict``'s reasons add (segad.explain).
The last line is end to end: files decoded, maps, SegAD score, in batches of
``--batch``, as ``SegadPipeline.predict`` serves them.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", default="elpv")
    ap.add_argument("--category", default="mono")
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=32, help="images per predict call in the end-to-end timing")
    ap.add_argument(
        "--full-layer", action="store_true", help="end to end through the forest even if the saved score skips it"
    )
    args = ap.parse_args()

    import torch

    from features.vector import feature_matrix
    from segad.data import load_dataset
    from segad.pipeline import SegadPipeline
    from segad.selection import ScoreBlend

    model = SegadPipeline.load(args.model, device=args.device)
    test = load_dataset(args.data, args.category).test[: args.n]
    x = model.preprocess([s.image_path for s in test])  # the run's resize and --intensity
    paths = [s.segment_path for s in test]
    model.predict_batch(x[:8], paths[:8])  # warm-up: backbone, numba, XGBoost

    def sync() -> None:
        if torch.cuda.is_available() and args.device != "cpu":
            torch.cuda.synchronize()

    t = {}
    t0 = time.perf_counter()
    outs = {d.name: d.predict(x) for d in model.detectors}
    sync()
    t["detectors"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    segments = model.segmenter.predict(x, paths)
    t["segments"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    X = feature_matrix(
        {k: o.maps for k, o in outs.items()}, {k: o.scores for k, o in outs.items()}, segments, model.n_segments
    )
    t["features"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    model.classifier.decision_function(X)
    t["classifier"] = time.perf_counter() - t0
    from segad.explain import explain

    scores = {k: o.scores for k, o in outs.items()}
    prior = model.blend.ensemble_score(scores) if model.classifier.prior_ is not None else None
    t0 = time.perf_counter()
    explain(model.blend, model.classifier, model.feature_names, X, scores, prior)
    t["explain"] = time.perf_counter() - t0
    t0 = time.perf_counter()  # the classifier's TreeSHAP, as when the saved score uses the forest
    explain(ScoreBlend.classifier_only(list(scores)), model.classifier, model.feature_names, X, scores, prior)
    shap = time.perf_counter() - t0
    n = len(x)
    layer = t["segments"] + t["features"] + t["classifier"]
    for k, v in t.items():
        print(f"  {k:<11} {v / n * 1000:7.2f} ms/image")
    print(
        f"SegAD layer {layer / n * 1000:.2f} ms/image = {100 * layer / t['detectors']:.1f}% of the detectors' "
        f"{t['detectors'] / n * 1000:.1f} ms/image ({', '.join(d.name for d in model.detectors)}; "
        f"segments {model.info.get('segments')}); {np.prod(x.shape[-2:])} px images"
    )
    why = t["explain"]
    print(
        f"segad.predict's reasons (--suggest needs nothing more) add {why / n * 1000:.2f} ms/image with the saved "
        f"score; the forest's TreeSHAP alone, when the score uses it: {shap / n * 1000:.2f} ms/image"
    )
    if args.full_layer:
        model.blend = ScoreBlend.classifier_only([d.name for d in model.detectors])
    files = [s.image_path for s in test]
    t0 = time.perf_counter()
    for i in range(0, len(files), args.batch):
        model.predict(files[i : i + args.batch], paths[i : i + args.batch])
    sync()
    e2e = time.perf_counter() - t0
    print(
        f"end to end (decode, maps, score; batch {args.batch}): {len(files) / e2e:.1f} images/s, "
        f"{e2e / len(files) * 1000:.1f} ms/image on {args.device}; the saved score: {model.blend.to_dict()}"
    )


if __name__ == "__main__":
    main()
