"""Charts a person would rather look at than read: ROC curves, score histograms, feature
importances by detector and segment, anomaly-map overlays of the best and worst test images (with why
each was scored so), AUPIMO per detector, and the table of missed defects and false alarms with their
reasons. Each function writes one file and returns its path."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from segad.explain import Explanation
    from segad.results import TrainResult


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, dpi: int = 110) -> Path:
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    _plt().close(fig)
    return path


def _first_seed(result: TrainResult) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    labels = np.array([s.label for s in result.dataset_table.test])[result.first_seed_test]
    return labels, result.first_seed_scores


def roc_curves(result: TrainResult, out: Path) -> Path:
    from sklearn.metrics import roc_curve

    plt = _plt()
    labels, scores = _first_seed(result)
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, s in scores.items():
        fpr, tpr, _ = roc_curve(labels, s)
        ax.plot(fpr, tpr, lw=2.5 if name == "segad" else 1.2, label=name)
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(
        xlabel="false positive rate",
        ylabel="true positive rate",
        title=f"ROC, seed {result.methods[0].per_seed[0].seed}",
    )
    ax.legend(loc="lower right")
    return _save(fig, out / "roc_curves.png", dpi=110)


def score_histograms(result: TrainResult, out: Path) -> Path:
    plt = _plt()
    labels, scores = _first_seed(result)
    fig, axes = plt.subplots(1, len(scores), figsize=(3.2 * len(scores), 2.8))
    for ax, (name, s) in zip(np.atleast_1d(axes), scores.items(), strict=True):
        bins = np.histogram_bin_edges(s, bins=30)
        ax.hist(s[labels == 0], bins=bins, alpha=0.6, label="good")
        ax.hist(s[labels == 1], bins=bins, alpha=0.6, label="defect")
        ax.set_title(name)
    np.atleast_1d(axes)[0].legend()
    return _save(fig, out / "score_histograms.png", dpi=110)


def feature_importances(result: TrainResult, out: Path) -> Path:
    """Importance summed per (detector, segment), and per image score."""
    plt = _plt()
    names = result.pipeline.feature_names
    imp = result.feature_importances
    groups: dict[str, float] = {}
    for n, v in zip(names, imp, strict=True):
        key = n.rsplit("/", 1)[0] if n.count("/") == 2 else n
        groups[key] = groups.get(key, 0.0) + float(v)
    keys = sorted(groups, key=groups.get, reverse=True)
    fig, ax = plt.subplots(figsize=(6, 0.25 * len(keys) + 1))
    ax.barh(keys[::-1], [groups[k] for k in keys[::-1]])
    ax.set(xlabel="XGBoost importance (gain share, mean over seeds)", title="what the classifier uses")
    return _save(fig, out / "feature_importances.png", dpi=110)


def overlays(result: TrainResult, out: Path, per_group: int = 4) -> Path:
    """The best and worst scored test images of seed 1 under each detector's map, every image of a detector
    on its one fixed scale (segad.overlay), with a colour bar per detector marking its threshold."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    from segad.data.images import read_rgb, resize
    from segad.overlay import outline, overlay

    plt = _plt()
    labels, scores = _first_seed(result)
    s = scores["segad"]
    idx = result.first_seed_test
    order_bad = np.argsort(s[labels == 1])
    order_good = np.argsort(s[labels == 0])
    bad_idx, good_idx = idx[labels == 1], idx[labels == 0]
    picks = [
        ("missed defect", bad_idx[order_bad[:per_group]]),
        ("caught defect", bad_idx[order_bad[::-1][:per_group]]),
        ("false alarm", good_idx[order_good[::-1][:per_group]]),
    ]
    dets = list(result.detector_maps)
    scales = result.pipeline.map_scales
    n_hold = len(next(iter(result.detector_maps.values())).scores) - len(result.dataset_table.test)
    rows = [(title, int(i)) for title, group in picks for i in group]
    fig, axes = plt.subplots(len(rows), 1 + len(dets), figsize=(2.2 * (1 + len(dets)), 2.6 * len(rows)), squeeze=False)
    for r, (title, i) in enumerate(rows):
        sample = result.dataset_table.test[i]
        img = resize(read_rgb(sample.image_path), result.pipeline.image_size)
        why = _explanation(result, i)
        top = why.top_segment if why is not None else None
        if top is not None and result.test_segments is not None:  # the segment that pushed most towards "defect"
            img = outline(img, result.test_segments[i] == top.segment)
        axes[r, 0].imshow(img)
        reasons = "".join(f"\n{reason}" for reason in why.top(2)) if why is not None else ""
        axes[r, 0].set_title(f"{title}\n{sample.image_path.name}{reasons}", fontsize=7)
        for c, d in enumerate(dets, start=1):
            m = result.detector_maps[d].maps[n_hold + i].astype(np.float32)
            axes[r, c].imshow(overlay(img, m, scales[d]))
            axes[r, c].set_title(f"{d}: max {m.max() / scales[d].threshold:.2f} x thr", fontsize=7)
        for ax in axes[r]:
            ax.axis("off")
    for c, d in enumerate(dets, start=1):
        sc = scales[d]
        bar = fig.colorbar(
            ScalarMappable(Normalize(sc.low, sc.high), cmap="jet"), ax=axes[:, c], orientation="horizontal",
            fraction=0.02, pad=0.01,
        )  # fmt: skip
        bar.ax.axvline(sc.threshold, color="k", lw=2)
        bar.ax.tick_params(labelsize=6)
        bar.set_label(f"{d}: good-image range, | threshold", fontsize=6)
    return _save(fig, out / "overlays.png", dpi=90)


def _explanation(result: TrainResult, test_index: int) -> Explanation | None:
    """Why a first-seed test image (an index into ``dataset_table.test``) got its score, when kept."""
    if not result.first_seed_explanations:
        return None
    return result.first_seed_explanations[int(np.flatnonzero(result.first_seed_test == test_index)[0])]


def reasons_table(result: TrainResult, out: Path) -> Path | None:
    """``reasons.csv``: every missed defect and false alarm of the saved model on the first seed's test
    set, with its score, the threshold and the three largest shares of its score (segad.explain)."""
    if not result.first_seed_explanations:
        return None
    labels, scores = _first_seed(result)
    s, threshold = scores["segad"], result.deployment.calibration.threshold
    rows = ["image,defect_type,kind,score,threshold,reason_1,reason_2,reason_3"]
    for pos, i in enumerate(result.first_seed_test):
        missed, alarm = labels[pos] == 1 and s[pos] < threshold, labels[pos] == 0 and s[pos] >= threshold
        if not (missed or alarm):
            continue
        sample = result.dataset_table.test[int(i)]
        top = [str(r) for r in result.first_seed_explanations[pos].top(3)]
        cells = [str(sample.image_path), sample.defect_type, "missed defect" if missed else "false alarm"]
        rows.append(",".join([*cells, f"{s[pos]:.4g}", f"{threshold:.4g}", *(top + [""] * (3 - len(top)))]))
    path = out / "reasons.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def aupimo_boxplot(result: TrainResult, out: Path) -> Path | None:
    from segad.data.images import load_mask
    from segad.metrics import MetricError, aupimo

    if not result.dataset_table.has_masks:
        return None
    plt = _plt()
    test = result.dataset_table.test
    data, names = [], []
    for d, dm in result.detector_maps.items():
        size = dm.maps.shape[1:]
        masks = np.stack([load_mask(s.mask_path, size, s.image_path) for s in test])
        try:
            scores = aupimo(masks, dm.maps[len(dm.scores) - len(test) :].astype(np.float32)).scores
        except MetricError:
            continue
        data.append(scores[np.isfinite(scores)])
        names.append(d)
    if not data:
        return None
    fig, ax = plt.subplots(figsize=(1.6 * len(data) + 2, 3.5))
    ax.boxplot(data, tick_labels=names)
    ax.set(ylabel="AUPIMO per anomalous image", ylim=(0, 1))
    return _save(fig, out / "aupimo_boxplot.png", dpi=110)


def charts(result: TrainResult, out: Path) -> list[Path]:
    paths = [roc_curves(result, out), score_histograms(result, out), feature_importances(result, out)]
    paths.append(overlays(result, out))
    if (p := reasons_table(result, out)) is not None:
        paths.append(p)
    if (p := aupimo_boxplot(result, out)) is not None:
        paths.append(p)
    return paths
