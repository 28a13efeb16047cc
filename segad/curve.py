"""``python -m segad.curve``: how many defects must a factory label? SegAD, the naive ensemble and every
detector against the number of labelled defects per seed, mean ± std over seeds.

    python -m segad.curve --shots 0,5,10,20,50 --generated 20          # ELPV mono, the default job
    python -m segad.curve --data synthetic --image-size 128 --shots 0,5,10,20 --generated 20

Each point is ``segad.train``'s whole protocol at that many shots (the maps come from the cache after
the first point, so a point costs the classifier's work). The detectors' rows move too: a seed's shots
leave its test set, so more shots test on fewer defects. Shots 0 trains SegAD on generated defects
alone (``--generated``). One MLflow run holds the curve: every method's ``<method>.auroc_mean`` /
``fpr95_mean`` (and ``_std``) with step = shots, so MLflow's own charts draw it, logged as each point
finishes, plus ``shots_curve.png`` and ``shots_curve.csv`` (also written to ``outputs/curves/<dataset>/``).
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

from detectors.errors import InputError
from segad.config import TrainConfig, build_parser, config_from
from segad.console import log
from segad.data.samples import Dataset
from segad.evaluate import MethodResult, format_table

DEFAULT_SHOTS = "0,5,10,20,50"


@dataclass(frozen=True)
class CurvePoint:
    shots: int
    methods: tuple[MethodResult, ...]
    n_test_defects: int  # the first seed's: more shots leave fewer defects to test on
    dataset: Dataset
    segments: str  # as resolved ("auto" -> the dataset's own maps or kmeans:8)


def parse_shots(text: str) -> list[int]:
    try:
        shots = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        raise InputError(f"--shots {text}: give labelled-defect counts separated by commas, e.g. 0,5,10,20") from None
    if not shots or shots[0] < 0:
        raise InputError(f"--shots {text}: give at least one count, each >= 0")
    return shots


def run_curve(cfg: TrainConfig, shots: Sequence[int], on_point=None) -> list[CurvePoint]:
    """The protocol at each shot count; ``on_point(point, first)`` is called as each one finishes."""
    from segad.train import run

    if 0 in shots and cfg.generated == 0:
        raise InputError("--shots 0 trains SegAD on generated defects alone: add --generated N (e.g. 20) or drop 0")
    points = []
    for k in shots:
        log(f"shots curve: {k} shots")
        result = run(replace(cfg, shots=k))
        labels = [s.label for s in (result.dataset_table.test[i] for i in result.first_seed_test)]
        segments = str(result.pipeline.info.get("segments", cfg.segments))
        point = CurvePoint(k, tuple(result.methods), int(sum(labels)), result.dataset_table, segments)
        if on_point:
            on_point(point, not points)
        points.append(point)
    return points


def write_table(points: Sequence[CurvePoint], path: Path) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["shots", "method", "auroc_mean", "auroc_std", "fpr95_mean", "fpr95_std", "seeds", "test_defects"])
        for p in points:
            for m in p.methods:
                w.writerow(
                    [
                        p.shots,
                        m.name,
                        m.auroc_mean,
                        m.auroc_std,
                        m.fpr95_mean,
                        m.fpr95_std,
                        len(m.per_seed),
                        p.n_test_defects,
                    ]
                )
    return path


def plot(points: Sequence[CurvePoint], path: Path, title: str) -> Path:
    """AUROC and FPR@95TPR against shots, a band of ± one std over seeds; SegAD and the ensemble bold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    x = np.array([p.shots for p in points])
    for name in [m.name for m in points[0].methods]:
        rows = [next(m for m in p.methods if m.name == name) for p in points]
        bold = name in ("segad", "ensemble")
        for ax, key in zip(axes, ("auroc", "fpr95"), strict=True):
            mean = np.array([getattr(r, f"{key}_mean") for r in rows])
            std = np.array([getattr(r, f"{key}_std") for r in rows])
            (line,) = ax.plot(x, mean, "o-", lw=2.5 if bold else 1.0, ms=4, label=name, alpha=1.0 if bold else 0.7)
            ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.15 if bold else 0.05)
    axes[0].set(xlabel="labelled defects per seed (shots)", ylabel="image AUROC", title=title)
    axes[1].set(xlabel="labelled defects per seed (shots)", ylabel="FPR at 95% TPR (lower is better)")
    axes[0].legend(fontsize=7)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    from segad import tracking

    ap = build_parser(prog="python -m segad.curve", description=__doc__, shots_list=True)
    cfg_values = vars(ap.parse_args(argv))
    try:
        shots = parse_shots(cfg_values.pop("shots"))
        cfg = config_from({**cfg_values, "shots": shots[0]})
        label = f"shots curve {','.join(map(str, shots))}"
        unnamed = cfg if not cfg.run_name else None  # named for what ran, once the dataset is resolved
        cfg = replace(cfg, run_name=tracking.run_name(cfg, shots=label))
        with nullcontext() if cfg.no_mlflow else tracking.parent_run(cfg):
            logged = None if cfg.no_mlflow else tracking.log_curve_point
            points = run_curve(cfg, shots, logged)
            ds = points[0].dataset
            out = Path("outputs") / "curves" / f"{ds.name}-{ds.category}"
            out.mkdir(parents=True, exist_ok=True)
            table = write_table(points, out / "shots_curve.csv")
            title = cfg.run_name
            if unnamed is not None:
                title = tracking.run_name(unnamed, f"{ds.name}/{ds.category}", points[0].segments, label)
            figure = plot(points, out / "shots_curve.png", title)
            if not cfg.no_mlflow:
                tracking.log_artifacts_of_curve(table, figure)
                if title != cfg.run_name:  # the dataset and segments as resolved, as segad.train's runs are named
                    tracking.rename_active_run(title)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for p in points:
        print(f"\n{p.shots} shots ({p.n_test_defects} test defects in the first seed):")
        print(format_table(list(p.methods)))
    print(f"\ncurve written to {table} and {figure}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
