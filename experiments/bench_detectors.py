"""Benchmark the base detectors: fit time, predict ms/image, peak RAM, image AUROC.

Each (detector, size) runs in a fresh process so peak RAM is that run's alone.

    python experiments/bench_detectors.py --n-fit 180 --no-quality     # speed: 180 ELPV mono cells, 256 px
    python experiments/bench_detectors.py --category poly              # quality: all good training cells
    python experiments/bench_detectors.py --fit-from all --n-fit 1000 --detectors patchcore --no-quality  # 8 GiB check
    python experiments/bench_detectors.py --device cuda                # on a GPU
    python experiments/bench_detectors.py --synthetic                  # image/pixel AUROC, AUPRO on the synthetic set
    python experiments/bench_detectors.py --detectors rd4ad,fastflow,efficientad,draem --n-fit 40 --no-quality \
        --set rd4ad.epochs=1 --set fastflow.epochs=1 ...   # trainable detectors: a short schedule's time

Trainable detectors also print each training phase's seconds and peak memory (from the loop's report).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
import torch


def fit_images(source: str, n: int) -> list:
    """The first n (0: all) good training cells of an ELPV category, or of mono then poly for ``all``."""
    from segad.data import load_elpv

    cats = ("mono", "poly") if source == "all" else (source,)
    paths = [s.image_path for c in cats for s in load_elpv(c).train_good]
    if n > len(paths):
        raise SystemExit(f"--n-fit {n}: ELPV {source} has only {len(paths)} good training cells")
    return paths[: n or len(paths)]


def detector_params(args: argparse.Namespace, name: str) -> dict:
    """Common runtime options plus this detector's ``--set name.option=value`` overrides."""
    params = {"device": args.device, "progress": False, "backbone": args.backbone}
    for item in args.set:
        key, _, value = item.partition("=")
        det, _, opt = key.partition(".")
        if det == name:
            params[opt] = value
    return params


def run_one(args: argparse.Namespace) -> dict:
    from sklearn.metrics import roc_auc_score

    from detectors import make_detector
    from segad.data import load_elpv, load_images

    params = detector_params(args, args.detector)
    if args.detector == "patchcore":
        params.setdefault("coreset_ratio", args.coreset_ratio)
    det = make_detector(args.detector, **params)
    fit_paths = fit_images(args.fit_from or args.category, args.n_fit)
    fit = load_images(fit_paths, args.image_size)
    t0 = time.perf_counter()
    det.fit(fit)
    if det.device.type == "cuda":
        torch.cuda.synchronize()
    fit_s = time.perf_counter() - t0
    del fit
    ds = load_elpv(args.category)
    test = ds.test
    x = load_images([s.image_path for s in test[: args.n_predict]], args.image_size)
    det.predict(x[: det.config.batch_size])  # warm-up
    t0 = time.perf_counter()
    det.predict(x)
    if det.device.type == "cuda":
        torch.cuda.synchronize()
    ms = (time.perf_counter() - t0) * 1000 / len(x)
    out = {
        "detector": args.detector,
        "backbone": args.backbone,
        "device": str(det.device),
        "category": args.category,
        "n_fit": len(fit_paths),
        "image_size": args.image_size,
        "fit_s": round(fit_s, 2),
        "predict_ms_per_image": round(ms, 1),
    }
    if args.detector == "patchcore":
        out["coreset_ratio"] = args.coreset_ratio
        out["coreset_s"] = round(det.fit_seconds_["coreset"], 2)
    for rep in getattr(det, "training_reports_", []):
        phase = rep.phase.split()[-1]
        out[f"{phase}_steps"] = rep.steps
        out[f"{phase}_s"] = round(rep.seconds, 1)
        out[f"{phase}_peak_mib"] = round(rep.peak_memory_mib)
        out[f"{phase}_loss"] = f"{rep.first_loss:.3g}->{rep.final_loss:.3g}"
    if args.quality:
        scores = []
        for s in range(0, len(test), 64):
            chunk = load_images([t.image_path for t in test[s : s + 64]], args.image_size)
            scores.append(det.predict(chunk).scores)
        out["image_auroc"] = round(float(roc_auc_score([t.label for t in test], np.concatenate(scores))), 4)
    out["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    if det.device.type == "cuda":
        out["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out


def synthetic_quality(args: argparse.Namespace) -> None:
    """Image AUROC, pixel AUROC and AUPRO of each detector on the built-in synthetic set (with masks)."""
    from detectors import make_detector
    from segad.data import SyntheticSpec, load_images, load_mask, load_synthetic
    from segad.metrics import aupro, image_auroc, pixel_auroc

    size = args.image_size
    ds = load_synthetic(SyntheticSpec(image_size=size, n_train=100, n_test_good=40, n_defects_per_type=10))
    fit = load_images([s.image_path for s in ds.train_good], size)
    test = ds.test
    x = load_images([s.image_path for s in test], size)
    labels = np.array([s.label for s in test])
    masks = np.stack([load_mask(s.mask_path, size, s.image_path) for s in test])
    print("detector | image_auroc | pixel_auroc | aupro_0.3 | aupro_0.05")
    for name in args.detectors.split(","):
        out = make_detector(name, **detector_params(args, name)).fit(fit).predict(x)
        print(
            f"{name} | {image_auroc(labels, out.scores):.4f} | {pixel_auroc(masks, out.maps):.4f} | "
            f"{aupro(masks, out.maps, 0.3):.4f} | {aupro(masks, out.maps, 0.05):.4f}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--detectors", default="patchcore,padim")
    ap.add_argument("--detector", help=argparse.SUPPRESS)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--category", default="mono", choices=("mono", "poly"), help="ELPV category to test on")
    ap.add_argument("--fit-from", choices=("mono", "poly", "all"), help="fit cells' category (default: --category)")
    ap.add_argument("--n-fit", type=int, default=0, help="number of good cells to fit on (0: all)")
    ap.add_argument("--n-predict", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--coreset-ratio", type=float, default=0.01)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-quality", dest="quality", action="store_false")
    ap.add_argument("--synthetic", action="store_true", help="quality on the synthetic set instead of ELPV")
    ap.add_argument("--set", action="append", default=[], metavar="DET.OPT=VAL", help="a detector option, repeatable")
    args = ap.parse_args()
    if args.synthetic:
        synthetic_quality(args)
        return
    if args.detector:
        print(json.dumps(run_one(args)))
        return
    rows = []
    for name in args.detectors.split(","):
        cmd = [sys.executable, __file__, "--detector", name] + [a for a in sys.argv[1:]]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode:
            raise SystemExit(f"{name} failed:\n{res.stderr}")
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    keys = sorted({k for r in rows for k in r}, key=lambda k: list(rows[0]).index(k) if k in rows[0] else 99)
    print(" | ".join(keys))
    for r in rows:
        print(" | ".join(str(r.get(k, "")) for k in keys))


if __name__ == "__main__":
    main()
