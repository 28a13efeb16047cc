"""Benchmark trainable detectors at a CPU schedule: quality, time per step and image, peak memory.

Each (detector, dataset) runs in a fresh process, so its peak RAM is its own. A row gives the
schedule that ran, training seconds per step, predict ms per image, peak RSS, image AUROC, pixel
AUROC and AUPRO@0.3, and the paper schedule's estimated time on this machine: the detector's
default schedule, scaled from each training phase's measured time by how much longer the default
schedule options (epochs, steps, ...) are than the ones given, at the benchmark's batch size (keep
it the default).

    python experiments/bench_seed_detectors.py --data synthetic --detectors pfm,pefm \\
        --set pfm.epochs=10 --set pefm.epochs=10
    python experiments/bench_seed_detectors.py --data brick ...   # a texture category (brick, gravel, grass)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from dataclasses import fields

import numpy as np

TEXTURES = ("brick", "gravel", "grass")


def load(data: str, size: int):
    from segad.data import SyntheticSpec, load_images, load_mask, load_synthetic
    from segad.data.textures import TextureSpec, load_textures

    ds = load_textures(data, TextureSpec()) if data in TEXTURES else load_synthetic(SyntheticSpec(image_size=size))
    fit = load_images([s.image_path for s in ds.train_good], size)
    x = load_images([s.image_path for s in ds.test], size)
    labels = np.array([s.label for s in ds.test])
    masks = np.stack([load_mask(s.mask_path, size, s.image_path) for s in ds.test])
    return fit, x, labels, masks


SCHEDULE = ("epochs", "steps", "meta_epochs", "sub_epochs", "samples_per_image")


def schedule_ratio(name: str, params: dict, phase: str) -> float:
    """How many times longer the default schedule is than the one that ran, for one training phase:
    the product of default / given over the schedule options set (``epochs``, ``steps``, ...; a
    two-phase detector's ``teacher_epochs`` counts for its ``teacher`` phase only)."""
    from detectors import detector_class

    defaults = {f.name: f.default for f in fields(detector_class(name).config_class)}
    ratio = 1.0
    for key, value in params.items():
        if key in SCHEDULE or key in (f"{phase}_epochs", f"{phase}_steps"):
            ratio *= float(defaults[key]) / float(value)
    return ratio


def run_one(args: argparse.Namespace) -> dict:
    import torch

    from detectors import make_detector
    from segad.metrics import aupro, image_auroc, pixel_auroc

    torch.set_num_threads(args.threads)
    fit, x, labels, masks = load(args.data, args.image_size)
    params = {"device": "cpu", "progress": False}
    for item in args.set:
        key, _, value = item.partition("=")
        det, _, opt = key.partition(".")
        if det == args.detector:
            params[opt] = value
    det = make_detector(args.detector, **params)
    t0 = time.perf_counter()
    det.fit(fit)
    fit_s = time.perf_counter() - t0
    det.predict(x[:4])  # warm-up
    t0 = time.perf_counter()
    out = det.predict(x)
    ms = (time.perf_counter() - t0) * 1000 / len(x)
    reports = getattr(det, "training_reports_", [])
    steps = sum(r.steps for r in reports)
    train_s = sum(r.seconds for r in reports)
    phases = [(r, schedule_ratio(args.detector, params, r.phase.split()[-1])) for r in reports]
    full_steps = round(sum(r.steps * k for r, k in phases))
    full_s = sum(r.seconds * k for r, k in phases)
    row = {
        "detector": args.detector,
        "data": args.data,
        "n_fit": len(fit),
        "size": args.image_size,
        "schedule": ",".join(f"{k}={v}" for k, v in params.items() if k not in ("device", "progress")) or "default",
        "steps": steps,
        "fit_s": round(fit_s, 1),
        "s_per_step": round(train_s / steps, 3) if steps else None,
        "phase_s_per_step": {r.phase.split()[-1]: round(r.seconds / r.steps, 3) for r in reports},
        "predict_ms": round(ms, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "image_auroc": round(image_auroc(labels, out.scores), 4),
        "pixel_auroc": round(pixel_auroc(masks, out.maps), 4),
        "aupro_0.3": round(aupro(masks, out.maps, 0.3), 4),
        "paper_steps": full_steps or None,
        "paper_cpu_min": round(full_s / 60, 1) if reports else None,
        "losses": [f"{r.first_loss:.3g}->{r.final_loss:.3g}" for r in reports],
    }
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--detectors", default="pfm,pefm")
    ap.add_argument("--detector", help=argparse.SUPPRESS)
    ap.add_argument("--data", default="synthetic", choices=("synthetic", *TEXTURES))
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (1 when another job shares the CPU)")
    ap.add_argument("--set", action="append", default=[], metavar="DET.OPT=VAL", help="a detector option, repeatable")
    args = ap.parse_args()
    if args.detector:
        print(json.dumps(run_one(args)))
        return
    for name in args.detectors.split(","):
        cmd = [sys.executable, __file__, "--detector", name, *sys.argv[1:]]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode:
            print(f"{name} failed:\n{res.stderr[-3000:]}", flush=True)
            continue
        print(res.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
