"""What a run returns: every method's metrics per seed, the saved model and its deployed threshold."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from segad.baselines import BaselineRun
from segad.calibration import Calibration
from segad.config import TrainConfig
from segad.data import Dataset
from segad.evaluate import MethodResult
from segad.explain import Explanation
from segad.maps import DetectorMaps
from segad.pipeline import SegadPipeline
from segad.selection import Selection


@dataclass(frozen=True)
class TrainResult:
    config: TrainConfig
    dataset_table: Dataset
    methods: list[MethodResult]
    detector_maps: dict[str, DetectorMaps]
    seconds: float
    pipeline: SegadPipeline
    first_seed_test: np.ndarray  # indices into dataset_table.test of the first seed's test set
    first_seed_scores: dict[str, np.ndarray]  # method -> scores on that set
    feature_importances: np.ndarray  # mean over seeds, in pipeline.feature_names order
    deployments: list[Deployment]  # per seed: its model's calibrated threshold on its test set; [0] is saved
    selections: list[Selection]  # per seed: the final score chosen on the training rows, and why
    baselines: tuple[BaselineRun, ...] = ()  # supervised baselines (--supervised), fit per seed
    judge_folds: int = 0  # folds the detectors were cross-fitted over to judge the final score (segad.judging)
    first_seed_explanations: list[Explanation] = field(default_factory=list)  # why each first_seed_test score
    test_segments: np.ndarray | None = None  # (N, H, W) segment labels of dataset_table.test (a view, no copy)

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.methods[0].per_seed]

    @property
    def deployment(self) -> Deployment:
        """The saved model's (the first seed's)."""
        return self.deployments[0]

    @property
    def dataset(self) -> str:
        return f"{self.dataset_table.name}/{self.dataset_table.category}"

    def summary(self) -> dict:
        return {
            "methods": {m.name: m.to_dict() for m in self.methods},
            "config": asdict(self.config),
            "dataset": self.dataset,
            "seconds": round(self.seconds, 1),
            "judge_folds": self.judge_folds,
            "deploy": self.deployment.to_dict(),
            "deploy_per_seed": [
                {"fpr": d.fpr, "tpr": d.tpr, "threshold": d.calibration.threshold} for d in self.deployments
            ],
            "selection": [
                {
                    "seed": sp_seed,
                    "chosen": sel.blend.label,
                    "base_weights": sel.blend.base_weights,
                    "inner_auroc": sel.inner_auroc,
                    "judged_good": sel.n_good,  # held-out good images, plus every fit image when cross-fitted
                    "judged_defects": sel.n_defects,
                }
                for sp_seed, sel in zip(self.seeds, self.selections, strict=True)
            ],
            "supervised": {b.name: b.summary() for b in self.baselines},
            "detectors": {
                name: {
                    "fit_seconds": round(dm.fit_seconds, 2),
                    "predict_ms_per_image": None if np.isnan(dm.predict_ms_per_image) else dm.predict_ms_per_image,
                    "cached_maps": dm.cached_maps,
                }
                for name, dm in self.detector_maps.items()
            },
        }


@dataclass(frozen=True)
class Deployment:
    """What the saved model's threshold does on the first seed's test set, which its classifier never saw."""

    calibration: Calibration
    fpr: float  # share of the test good images flagged
    tpr: float  # share of the test defects flagged
    n_good: int
    n_defects: int

    @classmethod
    def measure(cls, calibration: Calibration, labels: np.ndarray, scores: np.ndarray) -> Deployment:
        flagged = scores >= calibration.threshold
        good, bad = labels == 0, labels == 1
        return cls(
            calibration, float(flagged[good].mean()), float(flagged[bad].mean()), int(good.sum()), int(bad.sum())
        )

    def to_dict(self) -> dict:
        return {
            "fpr": self.fpr,
            "tpr": self.tpr,
            "n_good": self.n_good,
            "n_defects": self.n_defects,
            **self.calibration.to_params(),
        }
